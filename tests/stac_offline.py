"""Run stac-api-validator / stac-validator with the STAC JSON schemas from tests/stac_schemas.

The machine is offline, and both validators (and pystac, which stac-api-validator calls) fetch
every schema from the web. This module maps those URLs to the local copies: STAC 1.0.0 core
schemas (radiantearth/stac-spec at tag v1.0.0), the table extension v1.2.0
(stac-extensions/table at tag v1.2.0), the GeoJSON schemas (as pystac ships them) and the
draft-07 meta-schema (as jsonschema-specifications ships it). Any other URL that is not on
this machine fails loudly instead of waiting on a network that is not there.

    python -m tests.stac_offline api-validator --root-url ... --conformance core ...
    python -m tests.stac_offline validator <file or url>
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

SCHEMAS = Path(__file__).resolve().parent / "stac_schemas"


def _draft07() -> Path:
    import jsonschema_specifications

    return Path(jsonschema_specifications.__file__).parent / "schemas" / "draft7" / "metaschema.json"


def schema_map() -> dict[str, Path]:
    """Schema URL -> local file."""
    mapping: dict[str, Path] = {}
    for path in (SCHEMAS / "v1.0.0").rglob("*.json"):
        rel = path.relative_to(SCHEMAS / "v1.0.0").as_posix()
        mapping[f"https://schemas.stacspec.org/v1.0.0/{rel}"] = path
    for path in (SCHEMAS / "geojson").glob("*.json"):
        mapping[f"https://geojson.org/schema/{path.name}"] = path
    mapping["https://stac-extensions.github.io/table/v1.2.0/schema.json"] = SCHEMAS / "table-v1.2.0" / "schema.json"
    for url in ("http://json-schema.org/draft-07/schema", "http://json-schema.org/draft-07/schema#"):
        mapping[url] = _draft07()
    return mapping


def local_path(url: str) -> Path | None:
    """The local copy of a schema URL; raises for a remote URL that has none."""
    clean = url.split("#", 1)[0] if not url.startswith("http://json-schema.org/") else url
    mapping = schema_map()
    if clean in mapping:
        return mapping[clean]
    parts = urlsplit(url)
    if parts.scheme in ("http", "https") and parts.hostname not in ("127.0.0.1", "localhost"):
        raise RuntimeError(f"{url} is not in the local schema copy (tests/stac_schemas); the machine is offline")
    return None


def install() -> None:
    """Point stac-validator and pystac at the local schemas."""
    import pystac.stac_io
    import stac_validator.utilities as utilities
    import stac_validator.validate as validate

    original_file = utilities.fetch_and_parse_file

    def fetch_and_parse_file(input_path: str, headers: dict | None = None) -> dict[str, Any]:
        path = local_path(input_path)
        if path is not None:
            return json.loads(path.read_text())
        return original_file(input_path, headers)

    utilities.fetch_and_parse_file = fetch_and_parse_file
    validate.fetch_and_parse_file = fetch_and_parse_file
    utilities._schema_cache = utilities._build_schema_cache(utilities.DEFAULT_SCHEMA_CACHE_SIZE)

    original_read = pystac.stac_io.DefaultStacIO.read_text_from_href

    def read_text_from_href(self: Any, href: str) -> str:
        path = local_path(href)
        if path is not None:
            return path.read_text()
        return original_read(self, href)

    pystac.stac_io.DefaultStacIO.read_text_from_href = read_text_from_href  # type: ignore[method-assign]


def main(argv: list[str]) -> int:
    install()
    tool, args = argv[0], argv[1:]
    if tool == "api-validator":
        from stac_api_validator.__main__ import main as api_main

        return api_main.main(args=args, prog_name="stac-api-validator", standalone_mode=False) or 0
    if tool == "validator":
        from stac_validator.stac_validator import main as validator_main

        return validator_main.main(args=args, prog_name="stac-validator", standalone_mode=False) or 0
    raise SystemExit(f"unknown tool {tool!r}: api-validator or validator")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
