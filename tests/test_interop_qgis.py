"""QGIS 3.22 (Debian 12's python3-qgis, headless) against the running API, compared with the database.

QGIS opens each collection as an OGC API - Features layer (the OAPIF provider, landing page URL and
typename, as Layer > Add WFS / OGC API - Features Layer writes it) and reads every feature; it opens
the vector tiles as a Vector Tiles > New Generic Connection does (the XYZ template the TileJSON gives,
with and without the style URL) and draws them. tests/qgis_check.py runs inside QGIS's Python.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from psycopg import sql

from tests.conftest import RUN_DIR
from tests.interop_data import catalog, create_countries, create_dated_points
from tests.test_serving_support import SCHEMA, connect, drop, get_json

pytestmark = [pytest.mark.serving, pytest.mark.interop]

ROOT = Path(__file__).resolve().parent.parent
SYSTEM_PYTHON = Path("/usr/bin/python3")
N_POINTS = 3_000
# lon/lat boxes drawn from the tiles: one with countries in it, one of open sea (South Atlantic)
LAND = [5.0, 45.0, 15.0, 55.0]
SEA = [-20.0, -40.0, -10.0, -30.0]


@pytest.fixture(scope="module")
def qgis_world(database: str, api_server: str) -> Iterator[dict[str, Any]]:
    tag = uuid.uuid4().hex[:6]
    names = {"countries": f"qgis_countries_{tag}", "points": f"qgis_points_{tag}"}
    with connect(database) as conn:
        create_countries(conn, names["countries"])
        create_dated_points(conn, names["points"], N_POINTS)
        catalog(
            conn,
            names["countries"],
            "MultiPolygon",
            [{"name": "name", "type": "text"}, {"name": "pop_est", "type": "bigint"}],
            [],
        )
        catalog(conn, names["points"], "Point", [{"name": "rank", "type": "integer"}], ["observed"])
    yield {"names": names, "features": f"{api_server}/features", "db": database}
    with connect(database) as conn:
        for table in names.values():
            drop(conn, table)


def _rows(world: dict[str, Any], key: str, columns: list[str]) -> list[dict[str, Any]]:
    query = sql.SQL("SELECT id, {}, ST_X(ST_Centroid(geom)) x, ST_Y(ST_Centroid(geom)) y FROM {} ORDER BY id").format(
        sql.SQL(", ").join(map(sql.Identifier, columns)), sql.Identifier(SCHEMA, world["names"][key])
    )
    with connect(world["db"]) as conn:
        return conn.execute(query).fetchall()


@pytest.fixture(scope="module")
def qgis_sees(qgis_world: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One run of QGIS over both collections and the countries' tiles."""
    if (
        not SYSTEM_PYTHON.exists()
        or subprocess.run([str(SYSTEM_PYTHON), "-c", "import qgis.core"], capture_output=True, timeout=60).returncode
        != 0
    ):
        pytest.fail("QGIS's Python bindings are missing (python3-qgis): run the tests with `make test`", pytrace=False)
    base = qgis_world["features"]
    countries = f"{SCHEMA}.{qgis_world['names']['countries']}"
    points = f"{SCHEMA}.{qgis_world['names']['points']}"
    tilejson = get_json(f"{base}/collections/{countries}/tiles/WebMercatorQuad/tilejson.json")
    style_url = f"{base}/collections/{countries}/tiles/WebMercatorQuad/style.json"
    bboxes = {"land": LAND, "sea": SEA}
    request = {
        "landing": base,
        "collections": [countries, points],
        "fields": {
            countries: ["id", "name", "iso_a3", "pop_est", "gdp_md_est"],
            points: ["id", "k", "rank", "cat", "observed"],
        },
        "tiles": [
            {"url": tilejson["tiles"][0], "bboxes": bboxes},
            {"url": tilejson["tiles"][0], "styleUrl": style_url, "bboxes": bboxes},
            {"url": f"{base}/collections/{countries}/tiles/WebMercatorQuad/tilejson.json", "bboxes": bboxes},
        ],
    }
    home = tmp_path_factory.mktemp("qgis-home")  # QGIS writes its profile there, not in the user's
    home.chmod(0o700)
    proc = subprocess.run(
        [str(SYSTEM_PYTHON), str(ROOT / "tests" / "qgis_check.py"), json.dumps(request)],
        capture_output=True,
        text=True,
        timeout=180,
        env={"QT_QPA_PLATFORM": "offscreen", "HOME": str(home), "XDG_RUNTIME_DIR": str(home), "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    seen["ids"] = {"countries": countries, "points": points}
    seen["tilejson"] = tilejson
    return seen


def test_qgis_is_debian_12s_3_22(qgis_sees: dict[str, Any]) -> None:
    assert qgis_sees["qgis_version"].startswith("3.22."), qgis_sees["qgis_version"]


def test_qgis_reads_the_countries_as_the_database_holds_them(
    qgis_world: dict[str, Any], qgis_sees: dict[str, Any]
) -> None:
    layer = qgis_sees["features"][qgis_sees["ids"]["countries"]]
    assert layer["valid"], layer
    expected = _rows(qgis_world, "countries", ["name", "iso_a3", "pop_est", "gdp_md_est"])
    assert layer["feature_count"] == len(expected) == len(layer["features"])
    assert {"name", "iso_a3", "pop_est", "gdp_md_est"} <= set(layer["fields"])
    got = sorted(layer["features"], key=lambda f: f["attrs"]["id"])
    for feature, row in zip(got, expected, strict=True):
        attrs = feature["attrs"]
        assert (attrs["id"], attrs["name"], attrs["iso_a3"], attrs["pop_est"]) == (
            row["id"],
            row["name"],
            row["iso_a3"],
            row["pop_est"],
        )
        assert attrs["gdp_md_est"] == pytest.approx(row["gdp_md_est"])


def test_qgis_reads_the_dated_points_as_the_database_holds_them(
    qgis_world: dict[str, Any], qgis_sees: dict[str, Any]
) -> None:
    layer = qgis_sees["features"][qgis_sees["ids"]["points"]]
    assert layer["valid"], layer
    expected = _rows(qgis_world, "points", ["k", "rank", "cat", "observed"])
    assert layer["feature_count"] == len(expected) == len(layer["features"]) == N_POINTS
    got = sorted(layer["features"], key=lambda f: f["attrs"]["id"])
    for feature, row in zip(got, expected, strict=True):
        attrs = feature["attrs"]
        assert (attrs["id"], attrs["k"], attrs["rank"], attrs["cat"]) == (row["id"], row["k"], row["rank"], row["cat"])
        assert attrs["observed"] == row["observed"].strftime("%Y-%m-%dT%H:%M:%S"), (attrs, row)
        x, y = (float(v) for v in feature["geom"].split(","))
        assert (x, y) == (pytest.approx(row["x"], abs=1e-6), pytest.approx(row["y"], abs=1e-6))


def test_qgis_draws_the_vector_tiles_from_the_tilejson_template(qgis_sees: dict[str, Any]) -> None:
    plain, styled, tilejson_url = qgis_sees["tiles"]
    # QGIS 3.22 knows no TileJSON: its generic connection takes an XYZ template only (the README says
    # to paste the TileJSON's `tiles` template); the TileJSON URL itself is refused by the client
    assert not tilejson_url["valid"], tilejson_url
    for layer in (plain, styled):
        assert layer["valid"], layer
        assert not layer["render"]["land"]["errors"] and not layer["render"]["sea"]["errors"], layer
        # tiles were fetched and decoded: Europe is drawn, the open sea stays empty
        assert layer["render"]["land"]["drawn_pixels"] > 1000, layer
        assert layer["render"]["sea"]["drawn_pixels"] == 0, layer
    # the style.json was read and converted: its three layers (fill, stroke, point) became QGIS's styles
    assert styled["style"]["loaded"], styled["style"]
    countries = qgis_sees["ids"]["countries"]
    assert styled["style"]["styles"] == [f"{countries}_{kind}" for kind in ("fill", "stroke", "point")]


def test_qgis_pages_with_the_page_size_the_openapi_document_states(
    qgis_world: dict[str, Any], qgis_sees: dict[str, Any]
) -> None:
    items = f"/collections/{qgis_sees['ids']['points']}/items?"
    log = (RUN_DIR / "api-session.log").read_text(errors="replace")
    asked = [line.split(items, 1)[1].split(" ", 1)[0] for line in log.splitlines() if items in line]
    pages = [q for q in asked if q != "limit=10"]  # QGIS probes the collection with limit=10 first
    assert pages and all("limit=1000" in q for q in pages), asked
    assert len(pages) == -(-N_POINTS // 1000), asked
    # QGIS takes its page size from components/parameters/limit only; without it, 100 a request
    limit = get_json(f"{qgis_world['features']}/api")["components"]["parameters"]["limit"]
    assert (limit["in"], limit["schema"]["default"], limit["schema"]["maximum"]) == ("query", 1000, 10000)
