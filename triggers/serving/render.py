"""A job's render_params turned into a small, validated style for the viewer.

render_params is free-form user input (seed §3.3: a dict). Only known keys with values of the
right shape are kept, so nothing a user submits can reach the page as markup or script.
"""

from __future__ import annotations

import logging
import re
from typing import Any

log = logging.getLogger("geoetl.serving")

DEFAULT_STYLE: dict[str, Any] = {
    "fill_color": "#2f7ed8",
    "line_color": "#12355b",
    "point_color": "#2f7ed8",
    "fill_opacity": 0.45,
    "line_opacity": 1.0,
    "line_width": 1.5,
    "point_radius": 4.0,
    "point_stroke_color": "#ffffff",
    "point_stroke_width": 1.0,
    "background_color": "#eef1f4",
}

# style key -> accepted render_params names (first found wins)
_ALIASES: dict[str, tuple[str, ...]] = {
    "fill_color": ("fill_color", "fillColor", "fill", "color"),
    "line_color": ("line_color", "lineColor", "stroke_color", "strokeColor", "stroke", "outline_color", "color"),
    "point_color": ("point_color", "pointColor", "circle_color", "fill_color", "fillColor", "fill", "color"),
    "fill_opacity": ("fill_opacity", "fillOpacity", "opacity"),
    "line_opacity": ("line_opacity", "lineOpacity", "stroke_opacity", "strokeOpacity", "opacity"),
    "line_width": ("line_width", "lineWidth", "stroke_width", "strokeWidth", "weight", "width"),
    "point_radius": ("point_radius", "pointRadius", "circle_radius", "radius"),
    "point_stroke_color": ("point_stroke_color", "circle_stroke_color"),
    "point_stroke_width": ("point_stroke_width", "circle_stroke_width"),
    "background_color": ("background_color", "backgroundColor"),
}
_COLOR_KEYS = {"fill_color", "line_color", "point_color", "point_stroke_color", "background_color"}
_RANGES: dict[str, tuple[float, float]] = {
    "fill_opacity": (0.0, 1.0),
    "line_opacity": (0.0, 1.0),
    "line_width": (0.0, 50.0),
    "point_radius": (0.0, 100.0),
    "point_stroke_width": (0.0, 20.0),
}
_COLOR = re.compile(
    r"^(#[0-9a-fA-F]{3,4}|#[0-9a-fA-F]{6}|#[0-9a-fA-F]{8}"
    r"|(rgb|rgba|hsl|hsla)\(\s*[0-9.%]+\s*,\s*[0-9.%]+\s*,\s*[0-9.%]+\s*(,\s*[0-9.]+\s*)?\)"
    r"|[a-zA-Z]{3,20})$"
)


def _color(value: Any) -> str | None:
    return value.strip() if isinstance(value, str) and _COLOR.match(value.strip()) else None


def _number(value: Any, low: float, high: float) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    if number != number:  # NaN
        return None
    return min(max(number, low), high)


def style_from(render_params: Any) -> dict[str, Any]:
    """The viewer style: defaults overridden by the valid parts of render_params."""
    style = dict(DEFAULT_STYLE)
    if not isinstance(render_params, dict):
        return style
    for key, names in _ALIASES.items():
        for name in names:
            if name not in render_params:
                continue
            raw = render_params[name]
            value = _color(raw) if key in _COLOR_KEYS else _number(raw, *_RANGES[key])
            if value is None:
                log.info("viewer: ignoring render_params[%r] (not a valid %s)", name, key)
                continue
            style[key] = value
            break
    return style
