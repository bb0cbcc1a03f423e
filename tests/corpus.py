"""The real-data corpus: public files installed by scripts/bootstrap.sh --test (npm, into .corpus/) and
pyogrio's own test fixtures (PyPI). A missing file fails the test loudly: run `make test`."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / ".corpus" / "node_modules"


def npm_file(package: str, path: str) -> Path:
    found = ROOT / package / path
    if not found.is_file():
        pytest.fail(f"{found} is missing: the test corpus is installed by `make test` (scripts/bootstrap.sh --test)")
    return found


def pyogrio_fixture(name: str) -> Path:
    import pyogrio.tests

    found = Path(pyogrio.tests.__file__).parent / "fixtures" / name
    if not found.exists():
        pytest.fail(f"pyogrio's fixture {found} is missing")
    return found


COUNTRIES_MARITIME = ("@geo-maps/countries-maritime-10m", "map.geo.json")
EARTH_SEAS = ("@geo-maps/earth-seas-10m", "map.geo.json")
