"""Hostile clients: filters that crashed the parser, bodies too big or too deep, the STAC and
features errors that were 500s or text/plain, containers outside the allow-list, health leaks
and API keys in logs. Each case of issue 16 is a test here (the browser ones are in
tests/test_serving_browser_security.py, the supervisor in tests/test_supervisor.py).
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from tests.conftest import ROOT, RUN_DIR, TEST_ENV, free_port, port_open, wait_port
from tests.test_serving_support import add_catalog_entries, connect, create_squares, drop

pytestmark = pytest.mark.hostile



def extra_port(i: int) -> int:
    """Port of this module's i-th extra API: in 6NN00-6NN99 for a session on API port 71NN, else any free one."""
    port = 60000 + (int(os.environ.get("GEOETL_TEST_API_PORT", "7171")) - 7100) * 100 + 10 + i
    return port if 1024 < port < 65535 else free_port()


@contextmanager
def own_api(port: int, name: str, **env: str) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A real `geoetl serve` whose process this test holds: a crash shows as its exit."""
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    assert not port_open(port), f"port {port} is taken"
    log = open(RUN_DIR / f"api-{name}.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "triggers.cli", "serve", "--port", str(port)],
        cwd=ROOT, env={**os.environ, **TEST_ENV, **env}, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_port(port, timeout=60)
        yield f"http://127.0.0.1:{port}/api", proc
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="module")
def served(database: str) -> Iterator[dict[str, Any]]:
    """Our own API process and one small table (24 squares) with its catalog entries."""
    table = f"hostile_{uuid.uuid4().hex[:8]}"
    with own_api(extra_port(0), "hostile") as (base, proc):
        with connect(database) as conn:
            create_squares(conn, table)
            add_catalog_entries(conn, table, base.removesuffix("/api"))
        try:
            yield {"api": base, "proc": proc, "table": table}
        finally:
            with connect(database) as conn:
                drop(conn, table)


def assert_error(r: requests.Response, status: int | tuple[int, ...] = 400, *words: str) -> dict[str, Any]:
    statuses = status if isinstance(status, tuple) else (status,)
    assert r.status_code in statuses, (r.status_code, r.text[:300])
    assert r.headers["content-type"].startswith("application/json"), r.headers["content-type"]
    body = r.json()
    assert isinstance(body.get("error"), str) and isinstance(body.get("message"), str), body
    for word in words:
        assert word in body["message"], (word, body["message"])
    return body


# ---------------------------------------------------------------- filters nested up to 100,000 deep


def text_filters(depth: int) -> dict[str, str]:
    return {
        "parentheses": "(" * depth + "name = 'x'" + ")" * depth,
        "not": "NOT " * depth + "name = 'x'",
        "minus": "area_km2 > " + "-" * depth + "1",
    }


def json_filter(depth: int) -> dict[str, Any]:
    expr: dict[str, Any] = {"op": "=", "args": [{"property": "name"}, "x"]}
    for _ in range(depth):
        expr = {"op": "not", "args": [expr]}
    return expr


def json_filter_text(depth: int) -> str:
    # built as text: json.dumps of a 100,000-deep object would itself hit Python's recursion limit
    return '{"op":"not","args":[' * depth + '{"op":"=","args":[{"property":"name"},"x"]}' + "]}" * depth


MAX_REQUEST_BYTES = 1024 * 1024
DEPTHS = [1, 10, 64, 65, 100, 1_000, 2_000, 10_000, 100_000]


def filter_requests(api: str, table: str, depth: int) -> Iterator[tuple[str, requests.Request]]:
    items = f"{api}/features/collections/{table}/items"
    tile = f"{api}/features/collections/{table}/tiles/WebMercatorQuad/0/0/0"
    search = f"{api}/stac/search"
    stac_items = f"{api}/stac/collections/system-vectors/items"
    for form, text in text_filters(depth).items():
        for name, url in (("features items", items), ("tiles", tile), ("stac search", search),
                          ("stac items", stac_items)):
            yield f"GET {name} cql2-text {form}", requests.Request("GET", url, params={"filter": text})
        yield f"POST stac search cql2-text {form}", requests.Request(
            "POST", search, json={"filter": text, "filter-lang": "cql2-text"})
    jtext = json_filter_text(depth)
    for name, url in (("features items", items), ("tiles", tile), ("stac search", search)):
        params = {"filter": jtext, "filter-lang": "cql2-json"}
        yield f"GET {name} cql2-json", requests.Request("GET", url, params=params)
    yield "POST stac search cql2-json", requests.Request(
        "POST", search, data=('{"filter-lang":"cql2-json","filter":' + jtext + "}").encode(),
        headers={"content-type": "application/json"})


def test_filters_nested_up_to_100000_deep_never_crash_the_process(served: dict[str, Any]) -> None:
    api, proc, table = served["api"], served["proc"], served["table"]
    session = requests.Session()
    refused = by_http_server = 0
    for depth in DEPTHS:
        for label, req in filter_requests(api, table, depth):
            prepared = session.prepare_request(req)
            try:
                r = session.send(prepared, timeout=60)
            except requests.RequestException:
                # uvicorn refuses a request head over its limit (MAX_REQUEST_BYTES) with a 400 and closes
                # the connection, which the client may see as a reset while it still sends
                assert len(prepared.url or "") > MAX_REQUEST_BYTES and depth == 100_000, (label, depth)
                assert proc.poll() is None, f"{label} at depth {depth} killed the API (exit {proc.returncode})"
                by_http_server += 1
                session = requests.Session()
                continue
            assert proc.poll() is None, f"{label} at depth {depth} killed the API (exit {proc.returncode})"
            assert r.status_code < 500, (label, depth, r.status_code, r.text[:300])
            if depth <= 10:  # a valid filter: answered (the STAC POST search takes cql2-json only)
                expected = 400 if label.startswith("POST stac search cql2-text") else 200
                assert r.status_code == expected, (label, depth, r.text[:300])
            elif depth > 64:
                assert 400 <= r.status_code < 500, (label, depth, r.status_code)
                if len(r.request.url or "") > MAX_REQUEST_BYTES:  # a request head the HTTP server itself refuses
                    assert r.status_code == 400 and depth == 100_000, (label, depth)
                    by_http_server += 1
                    continue
                message = assert_error(r, (400, 413))["message"]
                assert any(limit in message for limit in ("64", "4096", "MAX_REQUEST_BYTES")), (label, message)
                refused += 1
    # every route and form at every depth over the limit: 19 requests a depth, 6 depths; only GET URLs of
    # several MB (cql2-json 100,000 deep) are refused by uvicorn's own limit on a request head
    assert refused + by_http_server == 19 * 6 and by_http_server <= 3
    # still serving, with the same process
    r = session.get(f"{api}/features/collections/{table}/items", params={"filter": "name = 'cell 0-0'"}, timeout=30)
    assert r.status_code == 200 and r.json()["numberMatched"] == 1 and proc.poll() is None


def test_filter_guard_limits_are_the_documented_ones() -> None:
    from triggers.serving import guards

    assert guards.filter_nesting("NOT " * 64 + "a = 1") == 64
    assert guards.filter_nesting("(" * 3 + "NOT NOT a = 1" + ")" * 3) == 5
    assert guards.filter_nesting("a = -1 AND b = -2 AND c = -3") == 1  # signs do not add up across operands
    guards.check_filter("(" * 64 + "a = 1" + ")" * 64)
    for bad in ("(" * 65 + "a = 1" + ")" * 65, "NOT " * 65 + "a=1", "a = " + "-" * 65 + "1", "a=1 AND " * 600):
        with pytest.raises(guards.QueryRefused):
            guards.check_filter(bad)


# ---------------------------------------------------------------- 500s that must be 4xx JSON


def test_features_cases_answer_4xx_json(served: dict[str, Any]) -> None:
    api, table = served["api"], served["table"]
    items = f"{api}/features/collections/{table}/items"
    assert_error(requests.get(items, params={"bbox": "nan,nan,nan,nan"}, timeout=30), 400, "bbox")
    assert_error(requests.get(items, params={"bbox": "0,0,inf,1"}, timeout=30), 400, "bbox")
    # south above north: tipg swapped the edges and answered for another box; the STAC API says 400 too
    for url in (items, f"{api}/stac/search"):
        assert_error(requests.get(url, params={"bbox": "0,10,10,0"}, timeout=30), 400, "southern edge")
        # six parts, four of them numbers: the edge check indexed past them (500)
        assert_error(requests.get(url, params={"bbox": "0,x,y,1,2,3"}, timeout=30), (400, 422))
    across = requests.get(items, params={"bbox": "170,-10,-170,10"}, timeout=30)  # over the antimeridian
    assert across.status_code == 200, across.text[:300]
    r = requests.get(f"{items}/1e23", timeout=30)
    assert_error(r, (400, 404))
    assert_error(requests.get(f"{api}/features/collections/{table}/tiles/WebMercatorQuad/-1/0/0", timeout=30),
                 (400, 404))
    assert_error(requests.get(f"{api}/vector/viewer", params={"collection": "a\x00b"}, timeout=30), 400, "NUL")
    assert_error(requests.get(f"{api}/jobs", params={"job_type": "a\x00b"}, timeout=30), 400)
    long_name = requests.get(f"{api}/vector/viewer", params={"collection": "n" * 100_000}, timeout=30)
    assert long_name.status_code == 404 and len(long_name.content) < 5000  # quotes a bounded prefix
    # short in characters, longer than PostgreSQL's 63-byte identifiers in UTF-8 (found by schemathesis)
    wide = requests.get(f"{api}/vector/viewer", params={"collection": "\U00010000" * 20}, timeout=30)
    assert wide.status_code == 404, wide.text[:300]
    assert served["proc"].poll() is None


def test_stac_cases_answer_4xx_json_in_both_conventions(served: dict[str, Any]) -> None:
    search = f"{served['api']}/stac/search"
    deep = json_filter_text(300)
    cases: list[tuple[str, requests.Response]] = [
        ("GET garbage intersects", requests.get(search, params={"intersects": "garbage"}, timeout=30)),
        ("POST garbage intersects", requests.post(search, json={"intersects": "garbage"}, timeout=30)),
        ("GET garbage token", requests.get(search, params={"token": "next:garbage"}, timeout=30)),
        ("POST garbage token", requests.post(search, json={"token": "garbage"}, timeout=30)),
        ("GET NaN bbox", requests.get(search, params={"bbox": "nan,nan,nan,nan"}, timeout=30)),
        ("POST NaN bbox", requests.post(search, data=b'{"bbox": [NaN, NaN, NaN, NaN]}', timeout=30)),
        ("POST op nope", requests.post(search, json={"filter": {"op": "nope"}}, timeout=30)),
        ("GET op nope", requests.get(search, params={"filter": '{"op":"nope"}', "filter-lang": "cql2-json"},
                                     timeout=30)),
        ("POST 300-deep cql2-json", requests.post(search, data=('{"filter":' + deep + "}").encode(), timeout=30)),
        ("POST array body", requests.post(search, json=[1, 2], timeout=30)),
        ("POST body without JSON header", requests.post(search, data=b"{not json", timeout=30)),
        ("GET bad datetime", requests.get(search, params={"datetime": "garbage"}, timeout=30)),
        ("GET negative limit", requests.get(search, params={"limit": "-1"}, timeout=30)),
    ]
    for label, r in cases:
        body = assert_error(r, 400)
        assert len(body["message"]) <= 1000, label
        if "code" in body:  # the STAC API's own convention, kept beside ours
            assert body["description"] == body["message"], label
    unknown = requests.get(f"{served['api']}/stac/collections/nope/items", timeout=30)
    body = assert_error(unknown, 404)
    assert body["code"] == "NotFoundError"
    assert served["proc"].poll() is None


# Geometry literals PostGIS refused with an internal error (500) until GEOS read them first.
BAD_GEOMETRIES = {
    "unclosed ring": ({"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [0, 1], [5, 5]]]},
                      "POLYGON((0 0, 1 1, 0 1, 5 5))", "closed"),
    "one-number position": ({"type": "Point", "coordinates": [0]}, None, "coordinates"),
    "unknown type": ({"type": "Bogus", "coordinates": [0, 0]}, None, "type"),
    "position as a list": ({"type": "Point", "coordinates": [[0, 0]]}, None, ""),
    "one-point line": ({"type": "LineString", "coordinates": [[0, 0]]}, "LINESTRING(0 0)", ""),
    "unclosed ring in a collection": (
        {"type": "GeometryCollection", "geometries": [{"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [0, 1]]]}]},
        None, "closed"),
}


def geometry_filter_requests(api: str, table: str, geometry: dict[str, Any], wkt: str | None
                             ) -> Iterator[tuple[str, requests.Request]]:
    items = f"{api}/features/collections/{table}/items"
    search = f"{api}/stac/search"
    for name, url, prop in (("features items", items, "geom"), ("stac search", search, "geometry")):
        for op in ("s_intersects", "s_within"):
            jfilter = {"op": op, "args": [{"property": prop}, geometry]}
            yield f"GET {name} cql2-json {op}", requests.Request(
                "GET", url, params={"filter": json.dumps(jfilter), "filter-lang": "cql2-json"})
            text = f"{op}({prop}, {wkt})"
            if wkt:
                yield f"GET {name} cql2-text {op}", requests.Request("GET", url, params={"filter": text})
            if name == "stac search":
                nested = {"op": "or", "args": [{"op": "=", "args": [{"property": "id"}, "x"]}, jfilter]}
                yield f"POST stac search cql2-json {op}", requests.Request("POST", url, json={"filter": jfilter})
                yield f"POST stac search nested {op}", requests.Request("POST", url, json={"filter": nested})


@pytest.mark.parametrize("case", list(BAD_GEOMETRIES))
def test_filter_geometries_postgis_cannot_read_answer_400_with_the_reason(served: dict[str, Any], case: str) -> None:
    geometry, wkt, word = BAD_GEOMETRIES[case]
    with requests.Session() as session:
        for label, request in geometry_filter_requests(served["api"], served["table"], geometry, wkt):
            r = session.send(request.prepare(), timeout=30)
            body = assert_error(r, 400, "not valid GeoJSON", word)
            if "/stac/" in request.url:
                assert body["code"] == "BadRequest" and body["description"] == body["message"], label
    assert served["proc"].poll() is None


def test_valid_filter_geometries_still_select(served: dict[str, Any]) -> None:
    """The geometry check refuses nothing GEOS reads: the same requests with a closed ring select."""
    square = {"type": "Polygon", "coordinates": [[[-180, -90], [180, -90], [180, 90], [-180, 90], [-180, -90]]]}
    wkt = "POLYGON((-180 -90, 180 -90, 180 90, -180 90, -180 -90))"
    with requests.Session() as session:
        for label, request in geometry_filter_requests(served["api"], served["table"], square, wkt):
            r = session.send(request.prepare(), timeout=30)
            assert r.status_code == 200, (label, r.text[:300])
            if "s_intersects" in label and "features" in label:
                assert r.json()["numberMatched"] == 24, label


def test_item_ids_past_the_id_column_type_are_not_found(served: dict[str, Any]) -> None:
    items = f"{served['api']}/features/collections/{served['table']}/items"
    for fid in ("99999999999999999999999", "-9223372036854775809", "9223372036854775808", "9223372036854775807"):
        assert_error(requests.get(f"{items}/{fid}", timeout=30), 404)
    assert requests.get(f"{items}/1", timeout=30).status_code == 200
    assert served["proc"].poll() is None


def create_world(conn: Any, table: str, kind: str) -> None:
    """Data over the whole globe, poles included: 10-degree squares, or a point every degree (65k)."""
    t = f'"geo"."{table}"'
    key = "id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY"
    if kind == "polygons":
        conn.execute(f"CREATE TABLE {t} ({key}, geom geometry(Polygon, 4326))")
        conn.execute(f"INSERT INTO {t} (geom) SELECT ST_MakeEnvelope(x, y, x + 10, y + 10, 4326)"
                     " FROM generate_series(-180, 170, 10) x, generate_series(-90, 80, 10) y")
    else:
        conn.execute(f"CREATE TABLE {t} ({key}, geom geometry(Point, 4326))")
        conn.execute(f"INSERT INTO {t} (geom) SELECT ST_SetSRID(ST_MakePoint(x, y), 4326)"
                     " FROM generate_series(-180, 180) x, generate_series(-90, 90) y")
    conn.execute(f"CREATE INDEX ON {t} USING gist (geom)")
    conn.execute(f"ANALYZE {t}")


@pytest.mark.parametrize("kind", ["polygons", "points"])
def test_tiles_of_every_tile_matrix_set_answer_without_error_for_data_over_the_globe(
    served: dict[str, Any], database: str, kind: str
) -> None:
    """Regional tile matrix sets (CanadianNAD83_LCC, UPS, UTM, LAEA, ...) reach data PROJ cannot project
    into them: tipg reprojected it as it was, and PostGIS failed (500). The corner and centre tiles of
    each set's first zoom and of two zooms deeper answer 200 (or 404 outside the matrix) with a
    decodable tile."""
    import mapbox_vector_tile
    import morecantile
    import psycopg

    table = f"world_{kind}_{uuid.uuid4().hex[:6]}"
    with connect(database) as conn:
        create_world(conn, table, kind)
        with pytest.raises(psycopg.errors.InternalError, match="outside of projection domain"):  # what tipg ran
            with conn.transaction():
                conn.execute(f'SELECT ST_Transform(geom, 3978) FROM "geo"."{table}"').fetchall()
    failures: list[str] = []
    served_any = 0
    try:
        with requests.Session() as session:
            for tms_id in morecantile.tms.list():
                tms = morecantile.tms.get(tms_id)
                if kind == "points" and tms.bbox[2] - tms.bbox[0] >= 359 and tms.bbox[3] - tms.bbox[1] >= 170:
                    continue  # points are clipped on their own path for regional sets only
                tiles = []
                for z in (max(tms.minzoom, 0), max(tms.minzoom, 0) + 2):  # CDB1GlobalGrid starts at -10
                    width, height = tms.matrix(z).matrixWidth, tms.matrix(z).matrixHeight
                    tiles += [(z, x, y) for x in {0, width // 2, width - 1} for y in {0, height // 2, height - 1}]
                for z, x, y in tiles:
                    url = f"{served['api']}/features/collections/geo.{table}/tiles/{tms_id}/{z}/{x}/{y}"
                    r = session.get(url, timeout=60)
                    if r.status_code == 200:
                        mapbox_vector_tile.decode(r.content)
                        served_any += bool(r.content)
                    elif r.status_code != 404:
                        failures.append(f"{tms_id}/{z}/{x}/{y}: {r.status_code} {r.text[:120]}")
    finally:
        with connect(database) as conn:
            conn.execute(f'DROP TABLE "geo"."{table}"')
    assert failures == []
    assert served_any > 40  # tiles with features
    assert served["proc"].poll() is None


def test_a_forwarded_scheme_other_than_http_or_https_is_refused(served: dict[str, Any]) -> None:
    """The apps build links from X-Forwarded-Proto / Forwarded (any client can send them) and failed
    with 500 on a scheme that is not http(s); a proxy's https is still honoured."""
    api, table = served["api"], served["table"]
    paths = ["/features/collections", f"/features/collections/{table}/items", "/stac/", "/stac/search"]
    bad = [{"X-Forwarded-Proto": "javascript"}, {"X-Forwarded-Proto": "https,http"}, {"X-Forwarded-Proto": "HTTPS"},
           {"Forwarded": "for=1.2.3.4;proto=ftp"}, {"Forwarded": "proto=https, proto=gopher"}]
    for path in paths:
        for headers in bad:
            assert_error(requests.get(api + path, headers=headers, timeout=30), 400, "http or https")
        ok = requests.get(api + path, headers={"X-Forwarded-Proto": "https", "X-Forwarded-Host": "maps.example"},
                          timeout=30)
        assert ok.status_code == 200, (path, ok.text[:300])
        assert all(link["href"].startswith("https://maps.example") for link in ok.json()["links"]), path
    assert served["proc"].poll() is None


# ---------------------------------------------------------------- bodies: size, depth, typed params


def ingest_body(**extra: Any) -> dict[str, Any]:
    return {"blob_name": "x/none.geojson", "file_extension": "geojson",
            "table_name": f"t_{uuid.uuid4().hex[:8]}", **extra}


def test_request_bodies_are_capped_in_size_and_depth(served: dict[str, Any], db: Any) -> None:
    url = f"{served['api']}/jobs/ingest_vector"
    before = db.execute("SELECT count(*) AS n FROM app.jobs").fetchone()["n"]
    huge = ingest_body(render_params={"title": "x" * (10 * 1024 * 1024)})
    assert_error(requests.post(url, json=huge, timeout=60), 413, "MAX_REQUEST_BYTES")

    def chunks() -> Iterator[bytes]:  # no Content-Length: the cap applies while reading
        yield b'{"render_params": {"title": "'
        for _ in range(40):
            yield b"y" * 65536
        yield b'"}}'

    assert_error(requests.post(url, data=chunks(), headers={"content-type": "application/json"}, timeout=60), 413)
    assert_error(requests.post(url, json=ingest_body(indexes={"attributes": ["i" * 5_000_000]}), timeout=60), 413)
    deep = ('{"table_name": "t_deep", "render_params": ' + '{"a":' * 255 + "1" + "}" * 255 + "}").encode()
    assert_error(requests.post(url, data=deep, timeout=30), 400, "MAX_JSON_DEPTH")
    assert_error(requests.post(url, json=[ingest_body()], timeout=30), 400, "JSON object")
    after = db.execute("SELECT count(*) AS n FROM app.jobs").fetchone()["n"]
    assert after == before  # nothing stored
    assert served["proc"].poll() is None


def test_typed_params_are_bounded_and_errors_quote_a_bounded_prefix(served: dict[str, Any]) -> None:
    url = f"{served['api']}/jobs/ingest_vector"
    long_name = "i" * 100_000
    for body, field in (
        (ingest_body(indexes={"attributes": [long_name]}), "indexes.attributes"),
        (ingest_body(render_params={"title": "t" * 100_000}), "render_params"),
        (ingest_body(render_params={"nested": {"a": {"b": 1}}}), "render_params"),
        (ingest_body(render_params={f"k{i}": i for i in range(40)}), "render_params"),
        (ingest_body(render_params={"fill_color": "javascript:alert(1)"}), "render_params.fill_color"),
        (ingest_body(render_params={"fill_opacity": 7}), "render_params.fill_opacity"),
        (ingest_body(converter_params={"layer_name": "l" * 20_000}), "converter_params"),
        (ingest_body(container_name=long_name), "container_name"),
        (ingest_body(table_name=long_name), "table_name"),
    ):
        r = requests.post(url, json=body, timeout=60)
        error = assert_error(r, 400, field)
        assert len(r.content) < 2000, (field, len(r.content))
        assert long_name not in error["message"]


def test_documented_render_params_are_kept_as_submitted(database: str, nonce: str) -> None:
    """Every style key the README documents, aliases included, is accepted and stored unchanged."""
    from jobs.ingest_vector import IngestVectorParameters

    style = {"fill_color": "#d33", "line_color": "#222", "fill_opacity": 0.5, "line_width": 2, "point_radius": 3,
             "point_color": "rgb(1, 2, 3)", "background_color": "white", "fill": "#abc", "color": "red",
             "opacity": 0.3, "title": "Parcels"}
    model = IngestVectorParameters.model_validate({"blob_name": "a.gpkg", "file_extension": "gpkg",
                                                   "table_name": f"t_{nonce}", "render_params": style})
    assert model.model_dump(mode="json", by_alias=True)["render_params"] == style
    empty = IngestVectorParameters.model_validate({"blob_name": "a.gpkg", "file_extension": "gpkg",
                                                   "table_name": f"t_{nonce}"})
    assert empty.model_dump(mode="json", by_alias=True)["render_params"] == {}


# ---------------------------------------------------------------- source containers


def test_only_allowed_containers_are_sources(served: dict[str, Any], nonce: str, db: Any) -> None:
    from config import get_settings
    from infrastructure.blob import get_blob_store

    settings = get_settings()
    store = get_blob_store()
    other = f"other-{nonce}"
    store.create_container(other)
    body = json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"secret": "s3cret"}, "geometry": {"type": "Point", "coordinates": [1, 2]}}
    ]}).encode()
    store.write_bytes(other, "private.geojson", body)
    store.write_bytes(settings.intermediate_container, f"{nonce}/chunk.geojson", body)
    url = f"{served['api']}/jobs/ingest_vector"
    missing = f"missing-{nonce}"
    try:
        _submit_from_each(url, nonce, [(other, "private.geojson"),
                                       (settings.intermediate_container, f"{nonce}/chunk.geojson"),
                                       (missing, "private.geojson")])
    finally:  # nothing left behind (the container stays: the blob API has no container delete here)
        store.delete_prefix(other, "private.geojson")
        store.delete_prefix(settings.intermediate_container, f"{nonce}/")
    jobs = db.execute("SELECT count(*) AS n FROM app.jobs WHERE parameters->>'table_name' = %s", [f"t_{nonce}"])
    assert jobs.fetchone()["n"] == 0  # no job was created: nothing of those containers was read


def _submit_from_each(url: str, nonce: str, sources: list[tuple[str, str]]) -> None:
    for container, blob in sources:
        r = requests.post(url, json={"blob_name": blob, "container_name": container, "file_extension": "geojson",
                                     "table_name": f"t_{nonce}"}, timeout=30)
        # the same answer whether the container exists or not: nothing to learn about the account
        error = assert_error(r, 404, f"container '{container}' is not a source container", "SOURCE_CONTAINERS")
        assert error["error"] == "not_found"


def test_source_containers_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    from config import Settings

    monkeypatch.delenv("SOURCE_CONTAINERS", raising=False)
    assert Settings().source_container_list == [Settings().source_container]
    monkeypatch.setenv("SOURCE_CONTAINERS", "a-one, b-two ,geoetl-intermediate")
    monkeypatch.setenv("INTERMEDIATE_CONTAINER", "geoetl-intermediate")
    assert Settings().source_container_list == ["a-one", "b-two"]  # the intermediate container never is one


# ---------------------------------------------------------------- health and keys


class RawAnswer:
    def __init__(self, status: int, text: str) -> None:
        self.status_code, self.text = status, text

    def json(self) -> Any:
        return json.loads(self.text)


def raw_request(method: str, url: str, body: bytes | None = None) -> RawAnswer:
    """A request whose URL goes out byte for byte (requests would decode %64 to d)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    try:
        conn.request(method, f"{parts.path}?{parts.query}", body=body,
                     headers={"content-type": "application/json"} if body else {})
        answer = conn.getresponse()
        return RawAnswer(answer.status, answer.read().decode())
    finally:
        conn.close()


KEY = "hostile-test-key-0123456789"
SAS = "sv=2022-11-02&ss=b&srt=co&sp=rl&sig=SASSIGNATURE0123456789"


def test_health_tells_anonymous_callers_only_up_or_down(database: str) -> None:
    broken_blob = f"BlobEndpoint=http://127.0.0.1:9/devstoreaccount1;SharedAccessSignature={SAS}"
    env = {"API_KEYS": KEY, "AZURE_STORAGE_CONNECTION_STRING": broken_blob}
    with own_api(extra_port(1), "hostile-health", **env) as (base, _proc):
        anonymous = requests.get(f"{base}/health", timeout=60)
        assert anonymous.status_code == 503
        body = anonymous.json()
        assert body["failing"] == ["blob"] and body["components"]["blob"] == {"status": "unhealthy"}
        assert set(body["components"]) == {"database", "blob", "queue", "registries", "serving"}
        for name, part in body["components"].items():
            extra = set(part) - {"status"}
            assert name == "database" or not extra, (name, part)  # the database shows its versions only
            assert extra <= {"postgresql", "postgis", "pgstac", "schema_version"}
        assert "SASSIGNATURE" not in anonymous.text and "127.0.0.1" not in anonymous.text
        assert "Error" not in anonymous.text

        for keyed in (requests.get(f"{base}/health", headers={"x-functions-key": KEY}, timeout=60),
                      raw_request("GET", f"{base}/health?co%64e={KEY}")):
            detail = keyed.json()["components"]
            assert keyed.status_code == 503 and "error" in detail["blob"], keyed.text[:300]
            assert detail["blob"]["error"].split(":")[0].isidentifier()  # the error class comes first
            assert "backend" in detail["queue"] and "ms" in detail["database"]
            assert "SASSIGNATURE" not in keyed.text and "sig=" not in keyed.text.replace("sig=***", "")
        wrong = requests.get(f"{base}/health", headers={"x-functions-key": "wrong"}, timeout=60)
        assert "error" not in wrong.json()["components"]["blob"]
        stac = requests.get(f"{base}/stac/_mgmt/health", timeout=60)  # stac-fastapi's route, answered by us
        assert stac.status_code == 200 and stac.json()["pgstac"]["status"] == "UP", stac.text
        assert set(stac.json()["pgstac"]) == {"status", "pgstac_version"}


def test_stac_health_route_tells_no_error_text(database: str) -> None:
    """Database down after start: stac-fastapi's own health route would answer the driver's error text."""
    with own_api(extra_port(4), "hostile-stac-health", DATABASE_URL=database.replace("/geoetl", "/geoetl_nope_")) as (
            base, _proc):
        r = requests.get(f"{base}/stac/_mgmt/health", timeout=60)
        assert r.status_code == 503 and r.json()["pgstac"] == {"status": "DOWN"}, r.text
        assert "nope" not in r.text and "postgres" not in r.text


def test_percent_encoded_key_is_accepted_and_redacted_in_the_access_log(database: str, nonce: str) -> None:
    with own_api(extra_port(2), f"hostile-keys-{nonce}", API_KEYS=KEY) as (base, _proc):
        body = json.dumps({"n": 1, "message": nonce}).encode()
        ok = raw_request("POST", f"{base}/jobs/submit/hello_world?co%64e={KEY}", body)
        assert ok.status_code == 202, ok.text
        refused = raw_request("POST", f"{base}/jobs/submit/hello_world?c%6Fde=wrong-{nonce}", body)
        assert refused.status_code == 401
    with connect(database) as conn:  # no message of this test is left for the next one
        conn.execute("DELETE FROM app.queue_messages WHERE body->>'job_id' = %s", [ok.json()["job_id"]])
    log = (RUN_DIR / f"api-hostile-keys-{nonce}.log").read_text()
    assert "co%64e=***" in log and KEY not in log and f"wrong-{nonce}" not in log


def test_redaction_reads_the_query_string_decoded() -> None:
    from config.logging import redact_query

    line = "GET /api/x?co%64e=K1&a=1&CODE=K2&%63ode=K3&x=code&sig=K4&co%2564e=K5&key=K6 HTTP/1.1"
    out = redact_query(line)
    assert not any(f"K{i}" in out for i in range(1, 7)), out
    assert "a=1" in out and "x=code" in out


def test_viewer_never_echoes_a_key(database: str, served: dict[str, Any]) -> None:
    table = served["table"]
    with own_api(extra_port(3), "hostile-viewer", API_KEYS=KEY, PROTECT_READS="true") as (base, _proc):
        page = requests.get(f"{base}/vector/viewer", params={"collection": table, "code": KEY}, timeout=30)
        assert page.status_code == 200 and KEY not in page.text and '"keyed":true' in page.text
        assert requests.get(f"{base}/vector/viewer", params={"collection": table}, timeout=30).status_code == 401
