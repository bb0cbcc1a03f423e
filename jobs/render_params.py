"""render_params (seed §3.3: a dict kept for the viewer) as a typed, bounded model.

The viewer's style keys are typed (colours, opacities, widths in the ranges it draws); any
other key (aliases such as `fill` or `color`, a `title`) is kept as submitted but must be a
short scalar or a short list of scalars. The whole dict stays small: it is stored in the job
row and in the STAC item, and served with every search.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_serializer, model_validator

MAX_KEYS = 32
MAX_KEY_LENGTH = 64
MAX_TEXT_LENGTH = 256
MAX_LIST_LENGTH = 16
MAX_BYTES = 4096

COLOR = re.compile(
    r"^(#[0-9a-fA-F]{3,4}|#[0-9a-fA-F]{6}|#[0-9a-fA-F]{8}"
    r"|(rgb|rgba|hsl|hsla)\(\s*[0-9.%]+\s*,\s*[0-9.%]+\s*,\s*[0-9.%]+\s*(,\s*[0-9.]+\s*)?\)"
    r"|[a-zA-Z]{3,20})$"
)
_COLOR_FIELDS = ("fill_color", "line_color", "point_color", "point_stroke_color", "background_color")


def _color(description: str) -> Any:
    return Field(None, max_length=64, description=description)


class RenderParams(BaseModel):
    """Style of the table in the map viewer; unknown keys are kept (bounded) for other clients."""

    model_config = ConfigDict(extra="allow", str_strip_whitespace=True, allow_inf_nan=False)

    fill_color: str | None = _color("Polygon fill colour (#rgb, #rrggbb, rgb(), hsl() or a CSS name).")
    line_color: str | None = _color("Line and outline colour.")
    point_color: str | None = _color("Point colour.")
    point_stroke_color: str | None = _color("Point outline colour.")
    background_color: str | None = _color("Map background colour.")
    fill_opacity: float | None = Field(None, ge=0, le=1, description="Polygon fill opacity.")
    line_opacity: float | None = Field(None, ge=0, le=1, description="Line opacity.")
    line_width: float | None = Field(None, ge=0, le=50, description="Line width (pixels).")
    point_radius: float | None = Field(None, ge=0, le=100, description="Point radius (pixels).")
    point_stroke_width: float | None = Field(None, ge=0, le=20, description="Point outline width (pixels).")

    @field_validator(*_COLOR_FIELDS)
    @classmethod
    def _is_color(cls, v: str | None) -> str | None:
        if v is not None and not COLOR.match(v):
            raise ValueError("not a colour (#rgb, #rrggbb, rgb(), rgba(), hsl() or a CSS colour name)")
        return v

    @model_validator(mode="after")
    def _bounded(self) -> RenderParams:
        extra = self.model_extra or {}
        if len(self.model_fields_set) + len(extra) > MAX_KEYS:
            raise ValueError(f"render_params holds more than {MAX_KEYS} keys")
        for key, value in extra.items():
            if len(key) > MAX_KEY_LENGTH:
                raise ValueError(f"a render_params key is longer than {MAX_KEY_LENGTH} characters")
            items = value if isinstance(value, list) else [value]
            if isinstance(value, list) and len(value) > MAX_LIST_LENGTH:
                raise ValueError(f"render_params[{key[:MAX_KEY_LENGTH]!r}] holds more than {MAX_LIST_LENGTH} values")
            for item in items:
                if isinstance(item, (dict, list)):
                    raise ValueError(f"render_params[{key!r}] must be a string, a number, true/false or a short list")
                if isinstance(item, str) and len(item) > MAX_TEXT_LENGTH:
                    raise ValueError(f"render_params[{key!r}] is longer than {MAX_TEXT_LENGTH} characters")
                if isinstance(item, float) and not math.isfinite(item):
                    raise ValueError(f"render_params[{key!r}] must be a finite number")
        if len(json.dumps(self._plain())) > MAX_BYTES:  # ASCII-escaped: a lone surrogate is reported later, by path
            raise ValueError(f"render_params is larger than {MAX_BYTES} bytes as JSON")
        return self

    def _plain(self) -> dict[str, Any]:
        fields = {k: getattr(self, k) for k in type(self).model_fields if getattr(self, k) is not None}
        return {**fields, **(self.model_extra or {})}

    @model_serializer(mode="plain")
    def _serialize(self) -> dict[str, Any]:
        """Only what was submitted (no null defaults): the job id hashes these parameters."""
        return self._plain()
