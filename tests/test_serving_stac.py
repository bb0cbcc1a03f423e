"""STAC API under /api/stac (stac-fastapi-pgstac), with requests and pystac-client."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.test_serving_support import COLLECTION, add_catalog_entries, connect, create_squares, drop, get_json, link

pytestmark = pytest.mark.serving


@pytest.fixture(scope="module")
def cataloged(database: str, api_server: str) -> Iterator[dict[str, Any]]:
    """A table with its STAC item, as an ingest leaves it."""
    table = f"srv_stac_{uuid.uuid4().hex[:8]}"
    with connect(database) as conn:
        create_squares(conn, table)
        item = add_catalog_entries(conn, table, api_server.removesuffix("/api"))
    yield {"table": table, "item": item, "base": f"{api_server}/stac"}
    with connect(database) as conn:
        drop(conn, table)


def test_landing_and_conformance_links_carry_the_prefix(cataloged: dict[str, Any]) -> None:
    base = cataloged["base"]
    for url in (base, base + "/"):
        landing = get_json(url)
        assert landing["type"] == "Catalog"
        for rel in ("self", "root", "data", "conformance", "search", "service-desc"):
            href = link(landing, rel)
            assert href is not None and href.startswith(f"{base}/"), (rel, href)
    conf = get_json(f"{base}/conformance")["conformsTo"]
    assert "https://api.stacspec.org/v1.0.0/core" in conf
    assert "https://api.stacspec.org/v1.0.0/item-search" in conf
    doc = get_json(link(landing, "service-desc"))
    assert "/search" in doc["paths"] and "/collections/{collection_id}/items" in doc["paths"]


def test_collections_items_and_item(cataloged: dict[str, Any]) -> None:
    base, item_id = cataloged["base"], cataloged["item"]["id"]
    cols = get_json(f"{base}/collections")
    col = next(c for c in cols["collections"] if c["id"] == COLLECTION)
    assert all(lk["href"].startswith(f"{base}/") for lk in col["links"] if lk["rel"] in ("self", "items", "parent"))
    assert get_json(f"{base}/collections/{COLLECTION}")["id"] == COLLECTION

    # the system-vectors collection lists every ingested table (follow its pages)
    url: str | None = f"{base}/collections/{COLLECTION}/items?limit=100"
    ids: list[str] = []
    while url:
        page = get_json(url)
        assert all(lk["href"].startswith(f"{base}/") for lk in page["links"] if lk["rel"] in ("self", "next"))
        ids += [f["id"] for f in page["features"]]
        url = link(page, "next")
    assert item_id in ids

    item = get_json(f"{base}/collections/{COLLECTION}/items/{item_id}")
    assert item["bbox"] == cataloged["item"]["bbox"]
    assert link(item, "self") == f"{base}/collections/{COLLECTION}/items/{item_id}"
    assert link(item, "collection") == f"{base}/collections/{COLLECTION}"
    assert link(item, "ogc-features").endswith(f"/api/features/collections/{item_id}/items")
    assert item["properties"]["etl:job_id"] == cataloged["item"]["properties"]["etl:job_id"]
    r = requests.get(f"{base}/collections/{COLLECTION}/items/geo.no_such_table", timeout=30)
    assert r.status_code == 404


def test_search_by_bbox_collections_and_ids(cataloged: dict[str, Any]) -> None:
    base, item_id = cataloged["base"], cataloged["item"]["id"]
    found = get_json(f"{base}/search", bbox="1,1,3,3", collections=COLLECTION, limit=100)
    assert item_id in [f["id"] for f in found["features"]]
    elsewhere = get_json(f"{base}/search", bbox="-120,-40,-110,-30", collections=COLLECTION)
    assert item_id not in [f["id"] for f in elsewhere["features"]]
    by_id = get_json(f"{base}/search", ids=item_id)
    assert [f["id"] for f in by_id["features"]] == [item_id]
    posted = requests.post(f"{base}/search", json={"bbox": [0, 0, 12, 8], "collections": [COLLECTION],
                                                    "ids": [item_id]}, timeout=30)
    assert posted.status_code == 200 and [f["id"] for f in posted.json()["features"]] == [item_id]
    assert link(posted.json(), "root") == f"{base}/"


def test_search_bodies_without_the_json_header(cataloged: dict[str, Any]) -> None:
    """`curl -d` sends a form Content-Type: the body is still read as JSON, and bad JSON is a 4xx."""
    import json

    base, item_id = cataloged["base"], cataloged["item"]["id"]
    body = json.dumps({"collections": [COLLECTION], "ids": [item_id]})
    for ctype in ("application/x-www-form-urlencoded", None, "text/plain"):
        headers = {"content-type": ctype} if ctype else {}
        r = requests.post(f"{base}/search", data=body.encode(), headers=headers, timeout=30)
        assert r.status_code == 200, (ctype, r.status_code, r.text[:200])
        assert [f["id"] for f in r.json()["features"]] == [item_id]
    bad = requests.post(f"{base}/search", data=b"{not json", timeout=30)
    assert 400 <= bad.status_code < 500, bad.text[:200]


def test_pystac_client_finds_the_item_by_bbox(cataloged: dict[str, Any]) -> None:
    from pystac_client import Client

    client = Client.open(cataloged["base"])
    search = client.search(bbox=[1, 1, 3, 3], collections=[COLLECTION], max_items=500)
    items = list(search.items())
    assert cataloged["item"]["id"] in [it.id for it in items]
    item = next(it for it in items if it.id == cataloged["item"]["id"])
    assert item.properties["table:row_count"] == 24
    assert client.get_collection(COLLECTION).id == COLLECTION
