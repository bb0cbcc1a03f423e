"""The client fixes of the serving layer, one by one, each beside the upstream behaviour it corrects."""

from __future__ import annotations

import pytest
from cql2 import Expr
from tipg import factory as tipg_factory
from tipg.collections import Column, PgCollection

from triggers.serving import interop, stac_interop, tipg_patches


def _collection() -> PgCollection:
    tipg_patches.install()
    columns = [Column(name="id", type="int8"), Column(name="rank", type="int4"), Column(name="cat", type="text"),
               Column(name="geom", type="geometry", geometry_type="point", srid=4326)]
    return PgCollection(type="Table", id="geo.t", table="t", schema="geo", properties=columns,
                        id_column=columns[0], geometry_columns=[columns[3]], datetime_columns=[])


def test_sortby_gets_the_id_as_tie_break() -> None:
    collection = _collection()
    upstream = tipg_patches.UPSTREAM["_sortby"](collection, "rank")
    assert upstream == 'ORDER BY "rank"'  # ties between equal ranks come back in any order
    assert collection._sortby("rank") == 'ORDER BY "rank", "id"'
    assert collection._sortby("-rank,cat") == 'ORDER BY "rank" DESC, "cat", "id"'
    assert collection._sortby("-id") == 'ORDER BY "id" DESC'  # already total
    assert collection._sortby(None) == 'ORDER BY "id"'


def test_conformance_has_no_oas30_class() -> None:
    tipg_patches.install()
    everything = tipg_factory.COMMON_CONFORMS + tipg_factory.FEATURES_CONFORMS + tipg_factory.TILES_CONFORMS
    assert not [c for c in everything if c.endswith("/oas30")]
    assert any(c.endswith("ogcapi-features-1/1.0/conf/core") for c in everything)


def test_cql2_bbox_literals_get_lon_lat() -> None:
    upstream = Expr("S_INTERSECTS(geom, BBOX(0,40,20,55))")
    assert "st_makeenvelope(0, 40, 20, 55)" in upstream.to_sql()  # SRID 0: PostGIS refuses mixed SRIDs
    fixed = Expr(interop.replace_bbox_literals(upstream.to_json())).to_sql()
    assert "st_geomfromgeojson" in fixed and "st_makeenvelope" not in fixed
    crossing = interop.replace_bbox_literals({"bbox": [170, -20, -170, 0]})
    assert crossing["type"] == "MultiPolygon" and len(crossing["coordinates"]) == 2


def test_bbox_polygons() -> None:
    assert interop.bbox_polygons([0, 1, 2, 3]) == {
        "type": "Polygon", "coordinates": [[[0, 1], [2, 1], [2, 3], [0, 3], [0, 1]]]}
    assert interop.bbox_polygons([0, 1, -5, 2, 3, 5])["type"] == "Polygon"
    west, east = interop.bbox_polygons([170, -20, -170, 0])["coordinates"]
    assert west[0][0] == [170, -20] and west[0][1] == [180.0, -20]
    assert east[0][0] == [-180.0, -20] and east[0][1] == [-170, -20]
    assert interop.crosses_antimeridian([170, -20, -170, 0])
    assert not interop.crosses_antimeridian([-170, -20, 170, 0]) and not interop.crosses_antimeridian(None)


@pytest.mark.parametrize(("value", "expected"), [
    ("2021-01-01", ["2021-01-01T00:00:00Z", "2021-01-02T00:00:00Z"]),
    ("2021-01-01T/2021-01-31T", ["2021-01-01T00:00:00Z", "2021-01-31T00:00:00.000001Z"]),
    ("2021-01-01/2021-01-31", ["2021-01-01T00:00:00Z", "2021-02-01T00:00:00Z"]),
    ("2021-01-01T10:00:00Z/2021-01-01T11:00:00Z", ["2021-01-01T10:00:00Z", "2021-01-01T11:00:00.000001Z"]),
    ("../2021-01-02", ["..", "2021-01-02T23:59:59.999999Z"]),
    ("2021-01-01T10:00:00Z/..", ["2021-01-01T10:00:00Z", ".."]),
    ("2021-01-01T10:00:00Z", ["2021-01-01T10:00:00Z"]),
    ("2021-02-30", ["2021-02-30"]),  # not a date: tipg refuses it with its own message
    ("a/b/c", ["a", "b", "c"]),
])
def test_datetimes_as_clients_send_them(value: str, expected: list[str]) -> None:
    assert interop.normalise_datetime(value) == expected


def test_tiles_outside_the_matrix() -> None:
    def why(path: str) -> str | None:
        return interop.tile_outside_matrix(path.split("/"))

    assert why("/collections/geo.t/tiles/WebMercatorQuad/2/3/3") is None
    assert "outside" in (why("/collections/geo.t/tiles/WebMercatorQuad/2/4/1") or "")
    assert "outside" in (why("/collections/geo.t/tiles/WebMercatorQuad/0/0/1") or "")
    assert "zoom" in (why("/collections/geo.t/tiles/WebMercatorQuad/25/0/0") or "")
    assert why("/collections/geo.t/tiles/NoSuchTms/0/0/9") is None  # tipg answers that one
    assert why("/collections/geo.t/items") is None


def test_tilejson_and_tileset_links() -> None:
    doc = interop.complete_tilejson({"tiles": ["http://h/api/features/collections/t/tiles/W/%7Bz%7D/%7Bx%7D/%7By%7D"]})
    assert doc["tilejson"] == "3.0.0" and doc["tiles"] == ["http://h/api/features/collections/t/tiles/W/{z}/{x}/{y}"]
    collection = interop.complete_collection({"links": [{"rel": "data", "href": "http://h/c/t/tiles"}]})
    assert [lk["rel"] for lk in collection["links"]] == ["data", interop.TILESETS_VECTOR]
    scheme = {"rel": "http://www.opengis.net/def/rel/ogc/1.0/tiling-scheme", "href": "http://h/tileMatrixSets/WebMercatorQuad"}
    tile = {"rel": "tile", "href": "http://h/{z}/{x}/{y}"}
    tilesets = interop.complete_tilesets({"tilesets": [{"links": [scheme, tile]}]})
    assert [lk["rel"] for lk in tilesets["tilesets"][0]["links"]] == [scheme["rel"], "tile", "item"]
    mercator = "http://www.opengis.net/def/tilematrixset/OGC/1.0/WebMercatorQuad"
    assert tilesets["tilesets"][0]["tileMatrixSetURI"] == mercator
    sets = interop.complete_tile_matrix_sets({"tileMatrixSets": [{"id": "WebMercatorQuad"}, {"id": "nope"}]})
    assert sets["tileMatrixSets"] == [{"id": "WebMercatorQuad", "uri": mercator}, {"id": "nope"}]


def test_stac_bbox_footprint_and_wrapping() -> None:
    assert stac_interop.footprint_bbox([1, 2, -10, 3, 4, 10]) == [1, 2, 3, 4]
    assert stac_interop.footprint_bbox([181, 84, 182, 85]) == [-179.0, 84, -178.0, 85]
    assert stac_interop.footprint_bbox([-190, 0, 190, 1]) == [-180.0, 0, 180.0, 1]
    assert stac_interop.footprint_bbox([1, 2, 3, 4]) == [1, 2, 3, 4]
    shape = stac_interop.antimeridian_intersects([170, -20, -170, 0])
    assert shape is not None and shape["type"] == "MultiPolygon"
    assert stac_interop.antimeridian_intersects([1, 2, 3, 4]) is None


def test_stac_items_get_a_null_datetime_for_ranges() -> None:
    ranged = {"type": "Feature", "properties": {"start_datetime": "a", "end_datetime": "b"}}
    single = {"type": "Feature", "properties": {"datetime": "2021-01-01T00:00:00Z"}}
    page = stac_interop.with_null_datetime({"type": "FeatureCollection", "features": [ranged, single]})
    assert page["features"][0]["properties"]["datetime"] is None
    assert page["features"][1]["properties"]["datetime"] == "2021-01-01T00:00:00Z"


def test_stac_query_extension_operators_as_cql2() -> None:
    assert stac_interop.query_as_filter({"n": {"gt": 1}}) is None  # stac-fastapi handles these itself
    cql = stac_interop.query_as_filter({"title": {"startsWith": "geo.a_b"}, "n": {"lte": 3}})
    assert cql == {"op": "and", "args": [{"op": "like", "args": [{"property": "title"}, "geo.a\\_b%"]},
                                         {"op": "<=", "args": [{"property": "n"}, 3]}]}
    assert stac_interop.query_as_filter({"t": {"in": ["a", "b"]}}) == {
        "op": "in", "args": [{"property": "t"}, ["a", "b"]]}
    assert stac_interop.query_as_filter({"t": {"contains": "50%"}})["args"][1] == "%50\\%%"
    assert stac_interop.query_as_filter({"t": {"endsWith": "x", "bogus": 1}}) is None


def test_stac_fields_rules() -> None:
    with pytest.raises(stac_interop.BadRequest):
        stac_interop.fields_with_defaults(None)
    assert stac_interop.fields_with_defaults({"exclude": ["geometry"]}) == {"exclude": ["geometry"]}
    defaults = stac_interop.fields_with_defaults({"include": [], "exclude": ["geometry"]})
    assert "geometry" not in defaults["include"] and "properties.datetime" in defaults["include"]
    assert stac_interop.fields_with_defaults({"include": ["bbox"]})["include"] == ["type", "bbox"]
    assert stac_interop.get_fields_with_defaults("bbox,-geometry") == "type,bbox,-geometry"
    body = stac_interop.normalise_search_body({"collections": "c", "bbox": [170, -20, -170, 0]})
    assert body["collections"] == ["c"] and "bbox" not in body and body["intersects"]["type"] == "MultiPolygon"
