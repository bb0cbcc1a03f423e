"""OGC API - Features and Tiles under /api/features, against the running API, with real clients."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import requests

from tests.test_serving_support import connect, create_points, drop, get_json, link

pytestmark = pytest.mark.serving

N = 4321


@pytest.fixture(scope="module")
def points(database: str, api_server: str) -> Iterator[dict[str, Any]]:
    """A table of N points, created while the API runs (its catalog has never seen it)."""
    import uuid

    table = f"srv_pts_{uuid.uuid4().hex[:8]}"
    with connect(database) as conn:
        xs, ys, cats = create_points(conn, table, N)
    yield {"table": table, "id": f"geo.{table}", "xs": xs, "ys": ys, "cats": cats, "base": f"{api_server}/features"}
    with connect(database) as conn:
        drop(conn, table)


def test_landing_conformance_and_openapi(points: dict[str, Any]) -> None:
    base = points["base"]
    for url in (base, base + "/"):
        landing = get_json(url)
        assert link(landing, "self").startswith(f"{base}/")
        assert link(landing, "conformance") == f"{base}/conformance"
        assert link(landing, "data") == f"{base}/collections"
    conf = get_json(f"{base}/conformance")["conformsTo"]
    for cls in ("ogcapi-features-1/1.0/conf/core", "ogcapi-features-1/1.0/conf/geojson",
                "ogcapi-features-3/1.0/conf/filter", "ogcapi-tiles-1/1.0/conf/mvt"):
        assert any(c.endswith(cls) for c in conf), cls

    # service-desc is an OpenAPI document that really describes these routes, under this prefix
    desc = link(landing, "service-desc")
    assert desc == f"{base}/api"
    r = requests.get(desc, timeout=30)
    assert r.status_code == 200 and "openapi" in r.headers["content-type"]
    doc = r.json()
    assert doc["servers"][0]["url"] == "/api/features"
    for path in ("/collections", "/collections/{collectionId}/items", "/collections/{collectionId}/items/{itemId}",
                 "/collections/{collectionId}/tiles/{tileMatrixSetId}/{z}/{x}/{y}"):
        assert path in doc["paths"], path
    names = {p["name"] for p in doc["paths"]["/collections/{collectionId}/items"]["get"]["parameters"]}
    assert {"limit", "offset", "bbox", "datetime", "properties", "filter", "filter-lang", "sortby"} <= names
    doc_page = requests.get(link(landing, "service-doc"), timeout=30)
    assert doc_page.status_code == 200 and "text/html" in doc_page.headers["content-type"]


def test_links_follow_forwarded_headers(points: dict[str, Any], api_server: str) -> None:
    """Behind a proxy (Front Door, APIM) both APIs link to the public host the client used."""
    headers = {"X-Forwarded-Host": "data.example.org", "X-Forwarded-Proto": "https"}
    for url, path in ((f"{points['base']}/collections/{points['table']}/items?limit=1", "/api/features/collections/"),
                      (f"{api_server}/stac/", "/api/stac/")):
        doc = requests.get(url, headers=headers, timeout=30).json()
        assert link(doc, "self").startswith(f"https://data.example.org{path}"), link(doc, "self")


def test_collections_and_collection(points: dict[str, Any]) -> None:
    base, cid = points["base"], points["id"]
    cols = get_json(f"{base}/collections")
    assert link(cols, "self").startswith(f"{base}/collections")
    mine = next(c for c in cols["collections"] if c["id"] == cid)
    assert any(lk["href"].startswith(f"{base}/collections/{cid}") for lk in mine["links"])
    for name in (points["table"], cid):
        col = get_json(f"{base}/collections/{name}")
        assert col["id"] == cid
        assert link(col, "self").startswith(f"{base}/collections/{cid}")
        assert link(col, "items") == f"{base}/collections/{cid}/items"
        assert any(lk["rel"] == "alternate" and lk["href"].startswith(f"{base}/") for lk in col["links"])
        x0, y0, x1, y1 = col["extent"]["spatial"]["bbox"][0]
        assert 4.9 < x0 < x1 < 15.1 and 44.9 < y0 < y1 < 55.1


@pytest.mark.parametrize("form", ["bare", "qualified"])
def test_items_limit_and_links(points: dict[str, Any], form: str) -> None:
    base, cid = points["base"], points["id"]
    name = points["table"] if form == "bare" else cid
    page = get_json(f"{base}/collections/{name}/items", limit=10)
    assert page["type"] == "FeatureCollection" and len(page["features"]) == 10
    assert page["numberMatched"] == N and page["numberReturned"] == 10
    nxt = link(page, "next")
    assert nxt is not None and nxt.startswith(f"{base}/collections/{cid}/items?") and "offset=10" in nxt
    assert link(page, "self").startswith(f"{base}/collections/{cid}/items")
    second = get_json(nxt)
    assert {f["id"] for f in second["features"]}.isdisjoint({f["id"] for f in page["features"]})
    prev = link(second, "prev")
    assert prev is not None and prev.startswith(f"{base}/collections/{cid}/items") and "offset=0" in prev
    one = page["features"][0]
    item = get_json(f"{base}/collections/{name}/items/{one['id']}")
    assert item["id"] == one["id"] and item["geometry"]["type"] == "Point"
    assert link(item, "self").startswith(f"{base}/collections/{cid}/items/")


def test_offset_paging_covers_the_table_once(points: dict[str, Any]) -> None:
    url: str | None = f"{points['base']}/collections/{points['table']}/items?limit=1000"
    seen: list[int] = []
    while url:
        page = get_json(url)
        seen += [f["id"] for f in page["features"]]
        url = link(page, "next")
    assert len(seen) == N and len(set(seen)) == N


def _matched(points: dict[str, Any], **params: Any) -> int:
    return get_json(f"{points['base']}/collections/{points['table']}/items", **params)["numberMatched"]


def test_bbox_offset_properties_and_sortby(points: dict[str, Any]) -> None:
    xs, ys = points["xs"], points["ys"]
    want = int(((xs >= 5) & (xs <= 10) & (ys >= 45) & (ys <= 50)).sum())
    page = get_json(f"{points['base']}/collections/{points['table']}/items", bbox="5,45,10,50", limit=50, offset=5)
    assert page["numberMatched"] == want and len(page["features"]) == 50
    for f in page["features"]:
        x, y = f["geometry"]["coordinates"]
        assert 5 <= x <= 10 and 45 <= y <= 50

    only_k = get_json(f"{points['base']}/collections/{points['table']}/items", properties="k", limit=3)
    assert all(set(f["properties"]) == {"k"} for f in only_k["features"])

    desc = get_json(f"{points['base']}/collections/{points['table']}/items", sortby="-k", limit=3)
    assert [f["properties"]["k"] for f in desc["features"]] == [N - 1, N - 2, N - 3]
    asc = get_json(f"{points['base']}/collections/{points['table']}/items", sortby="cat,k", limit=1)
    assert asc["features"][0]["properties"]["cat"] == "a"


def test_filters_and_datetime(points: dict[str, Any]) -> None:
    cats = points["cats"]
    k = np.arange(N)
    want = int(((cats == "a") & (k < 1000)).sum())
    assert _matched(points, filter="cat = 'a' AND k < 1000") == want
    assert _matched(points, filter="cat = 'a' AND k < 1000", **{"filter-lang": "cql2-text"}) == want
    as_json = {"op": "and", "args": [{"op": "=", "args": [{"property": "cat"}, "a"]},
                                     {"op": "<", "args": [{"property": "k"}, 1000]}]}
    assert _matched(points, filter=json.dumps(as_json), **{"filter-lang": "cql2-json"}) == want
    spatial = "S_INTERSECTS(geom, POLYGON((5 45, 10 45, 10 50, 5 50, 5 45)))"
    assert _matched(points, filter=spatial) == _matched(points, bbox="5,45,10,50")
    assert _matched(points, cat="b") == int((cats == "b").sum())  # simple property query
    # observed = 2024-01-01 + k days: January 2024 holds k = 0..30
    assert _matched(points, datetime="2024-01-01T00:00:00Z/2024-01-31T12:00:00Z") == 31
    assert _matched(points, datetime="2024-01-11T00:00:00Z") == 1
    assert _matched(points, datetime="../2024-01-05T00:00:00Z") == 5


def test_bad_queries_are_400_and_unknown_ids_404(points: dict[str, Any]) -> None:
    items = f"{points['base']}/collections/{points['table']}/items"
    for params in ({"filter": "cat = "}, {"filter": "nope = 1"}, {"sortby": "nope"}, {"bbox": "1,2,3"},
                   {"limit": "100001"}, {"filter-lang": "sql", "filter": "k = 1"}, {"filter": "k = 'x'"},
                   {"bbox": "a,b,c,d"}, {"datetime": "2024-13-01T00:00:00Z"}):
        r = requests.get(items, params=params, timeout=30)
        assert r.status_code == 400, (params, r.status_code, r.text[:200])
        body = r.json()
        assert body["error"] == "validation_error" and body["message"] and "Traceback" not in r.text
    for cid in ("no_such_table", "geo.no_such_table", "public.spatial_ref_sys"):
        r = requests.get(f"{points['base']}/collections/{cid}/items", timeout=30)
        assert r.status_code == 404 and r.json()["error"] == "not_found", cid


def test_html_output(points: dict[str, Any]) -> None:
    for path in ("", "/collections", f"/collections/{points['table']}", f"/collections/{points['table']}/items"):
        r = requests.get(points["base"] + path, params={"f": "html"}, timeout=30)
        assert r.status_code == 200 and "text/html" in r.headers["content-type"], path
    r = requests.get(f"{points['base']}/collections/{points['table']}/items", headers={"Accept": "text/html"},
                     timeout=30)
    assert "text/html" in r.headers["content-type"]


def test_tilejson_and_vector_tile(points: dict[str, Any]) -> None:
    base, cid = points["base"], points["id"]
    tj = get_json(f"{base}/collections/{points['table']}/tiles/WebMercatorQuad/tilejson.json")
    assert tj["tiles"] == [f"{base}/collections/{cid}/tiles/WebMercatorQuad/{{z}}/{{x}}/{{y}}"]
    assert tj["vector_layers"][0]["id"] and "k" in tj["vector_layers"][0]["fields"]
    x0, y0, x1, y1 = tj["bounds"]
    assert 4.9 < x0 < x1 < 15.1 and 44.9 < y0 < y1 < 55.1
    # z4 tile 8/5 covers lon 0..22.5, lat 40.9..55.8: all the points
    r = requests.get(tj["tiles"][0].format(z=4, x=8, y=5), timeout=30)
    assert r.status_code == 200 and r.headers["content-type"] == "application/vnd.mapbox-vector-tile"
    assert len(r.content) > 1000
    empty = requests.get(tj["tiles"][0].format(z=4, x=0, y=0), timeout=30)
    assert empty.status_code in (200, 204) and len(empty.content) < 100
    tms = get_json(f"{base}/tileMatrixSets")
    assert any(t["id"] == "WebMercatorQuad" for t in tms["tileMatrixSets"])
    deep = requests.get(tj["tiles"][0].format(z=99, x=1, y=1), timeout=30)
    assert deep.status_code == 400 and "zoom level 99" in deep.json()["message"]


def test_owslib_collections_and_items(points: dict[str, Any]) -> None:
    from owslib.ogcapi.features import Features

    api = Features(points["base"])
    ids = [c["id"] for c in api.collections()["collections"]]
    assert points["id"] in ids
    got = api.collection_items(points["table"], bbox=[5, 45, 10, 50], limit=25)
    assert len(got["features"]) == 25
    assert all(5 <= f["geometry"]["coordinates"][0] <= 10 for f in got["features"])
    xs, ys = points["xs"], points["ys"]
    assert got["numberMatched"] == int(((xs <= 10) & (ys <= 50)).sum())
    assert api.collection(points["id"])["id"] == points["id"]


def test_gdal_oapif_reads_the_whole_table_across_pages(points: dict[str, Any]) -> None:
    import pyogrio

    layers = [name for name, _ in pyogrio.list_layers(f"OAPIF:{points['base']}")]
    assert points["id"] in layers
    df = pyogrio.read_dataframe(f"OAPIF:{points['base']}", layer=points["id"])
    assert len(df) == N
    assert df["k"].nunique() == N and set(df["cat"]) == {"a", "b", "c"}
    assert df.geometry.x.between(5, 15).all() and df.geometry.y.between(45, 55).all()
