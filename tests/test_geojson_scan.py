"""The block scanner of GeoJSON features (services/vector/geojson_scan.py) against Python's own JSON
reading of the same documents: feature spans, geometry types, the types copy and whole records, at
block sizes that put a cut everywhere (inside strings, escapes, keys, numbers); and the shapes it
must refuse."""

from __future__ import annotations

import io
import json
import random
from typing import Any

import pytest

from services.vector.geojson_scan import RS, FeatureScan, NotPlannable

NASTY = ['a"b', "back\\slash", 'ends with \\', '\\"', "{[,:]}", '"geometry": {"type": "Point"}', "é ü 漢字 🌍",
         "\\\\\\", "", "line\nbreak", '"type"', "\u001e"]  # fmt: skip
SEPARATORS = [(",", ":"), (", ", ": "), (" ,\n\t", " :  ")]


def _geometry(rng: random.Random) -> Any:
    kind = rng.choice(["Point", "LineString", "Polygon", "MultiPolygon", "null", "empty", "MultiPoint"])
    if kind == "null":
        return None
    if kind == "empty":
        return {"type": rng.choice(["Polygon", "LineString"]), "coordinates": []}
    pt = [round(rng.uniform(-180, 180), 6), round(rng.uniform(-90, 90), 6)]
    coords: Any = {
        "Point": pt,
        "MultiPoint": [pt, pt],
        "LineString": [pt, pt],
        "Polygon": [[pt, pt, pt, pt]],
        "MultiPolygon": [[[pt, pt, pt, pt]], [[pt, pt, pt, pt]]],
    }[kind]
    geometry = {"type": kind, "coordinates": coords}
    if rng.random() < 0.2:
        geometry = {"coordinates": coords, "type": kind}  # type after the coordinates
    return geometry


def _feature(rng: random.Random, i: int) -> dict[str, Any]:
    props: dict[str, Any] = {"n": i, "s": rng.choice(NASTY), rng.choice(NASTY) + "k": rng.choice(NASTY)}
    if rng.random() < 0.3:
        props["nested"] = {"geometry": {"type": "GeometryCollection"}, "list": [[1, 2], {"a": "}"}]}
    members: list[tuple[str, Any]] = [("type", "Feature"), ("properties", props), ("geometry", _geometry(rng))]
    if rng.random() < 0.3:
        members.append(("id", i))
    if rng.random() < 0.2:
        members.append(("bbox", [0, 0, 1, 1]))
    rng.shuffle(members)
    return dict(members)


def _document(rng: random.Random, count: int, sequence: bool, rs: bool) -> tuple[bytes, list[tuple[int, int]]]:
    """The file's bytes and each feature's [start, end) span, as written."""
    item, key = rng.choice(SEPARATORS)
    texts = [json.dumps(_feature(rng, i), separators=(item, key), ensure_ascii=rng.random() < 0.5)
             for i in range(count)]
    out, spans = bytearray(), []
    if not sequence:
        out += b'{"type": "FeatureCollection", "name": "x\\"}", '
        out += b'"crs": {"type": "name", "properties": {"name": "EPSG:4326"}},\n "features": [\n'
    for i, text in enumerate(texts):
        data = text.encode()
        if sequence and rs:
            out += RS
        spans.append((len(out), len(out) + len(data)))
        out += data
        out += (b"\n" if sequence else (b",\n" if i < count - 1 else b"\n"))
    if not sequence:
        out += b'], "bbox": [-180, -90, 180, 90]}\n'
    return bytes(out), spans


def _scan(data: bytes, sequence: bool, whole: bool = False, block: int = 4096) -> tuple[FeatureScan, bytes]:
    out = io.BytesIO()
    scan = FeatureScan(io.BytesIO(data), out, sequence, whole=whole, block=block)
    scan.run()
    return scan, out.getvalue()


def _records(text: bytes) -> list[Any]:
    return [json.loads(r) for r in text.split(RS) if r.strip()]


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("block", [3, 65, 300, 1 << 20])
def test_spans_types_and_copies_match_python_json(seed: int, block: int) -> None:
    rng = random.Random(seed * 1000 + block)
    sequence = seed % 2 == 1
    data, spans = _document(rng, 40, sequence, rs=seed % 3 == 1)
    features = [json.loads(data[a:b]) for a, b in spans]
    scan, types_copy = _scan(data, sequence, block=block)
    assert scan.count == len(spans)
    assert list(zip(scan.starts.tolist(), scan.ends.tolist(), strict=True)) == spans
    expected_types = {
        f["geometry"]["type"] for f in features if f["geometry"] and f["geometry"]["coordinates"]
    }
    assert scan.geometry_types == expected_types
    assert _records(types_copy) == [{**f, "geometry": None} for f in features]
    if not sequence:
        assert scan.top == {"type": "FeatureCollection", "name": 'x"}', "bbox": [-180, -90, 180, 90],
                            "crs": {"type": "name", "properties": {"name": "EPSG:4326"}}}
    else:
        assert scan.uses_rs == (seed % 3 == 1)
    _, records = _scan(data, sequence, whole=True, block=block)
    assert _records(records) == features
    assert records.count(RS) == len(features)


def test_a_byte_order_mark_and_blank_text_around_the_collection() -> None:
    point = b'{"type":"Feature","properties":{},"geometry":{"type":"Point","coordinates":[1,2]}}'
    data = b"\xef\xbb\xbf \n" + _collection(b" " + point + b" ") + b"  \n"
    scan, _ = _scan(data, False, block=5)
    assert scan.count == 1 and scan.geometry_types == {"Point"}


F = b'{"type":"Feature","properties":{},"geometry":null}'


def _collection(items: bytes, after: bytes = b"") -> bytes:
    return b'{"type":"FeatureCollection","features":[' + items + b"]" + after + b"}"


REFUSED = {
    "foreign member": _collection(F[:-1] + b',"extra":1}'),
    "repeated member": _collection(F[:-1] + b',"properties":{}}'),
    "literal between features": _collection(F + b" 5, " + F),
    "number item": _collection(F + b", 5, " + F),
    "missing comma": _collection(F + b" " + F),
    "two commas": _collection(F + b",," + F),
    "trailing comma": _collection(F + b","),
    "string item": _collection(b'"x"'),
    "not a feature": _collection(F.replace(b'"Feature"', b'"Featur"')),
    "no type": _collection(F.replace(b'"type":"Feature",', b"")),
    "array item": _collection(b"[" + F + b"]"),
    "features twice": _collection(b"", b',"features":[]'),
    "features not an array": b'{"type":"FeatureCollection","features":{}}',
    "top-level array": b"[" + F + b"]",
    "two objects": _collection(b"") + b" {}",
    "text after": _collection(b"") + b" x",
    "text after features": _collection(b"", b' x, "name": "a"'),
    "deep nesting": _collection(F.replace(b"{}", b'{"a":' + b"[" * 70 + b"]" * 70 + b"}")),
    "large top member": b'{"name":"' + b"x" * (1024**2 + 10) + b'",' + _collection(b"")[1:],
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_shapes_it_cannot_vouch_for_are_refused(name: str) -> None:
    data = REFUSED[name]
    for block in (3, 4096, 1 << 21) if len(data) < 10_000 else (4096, 1 << 21):
        with pytest.raises((NotPlannable, ValueError)):
            _scan(data, False, block=block)


def test_a_sequence_with_text_between_records_is_refused() -> None:
    good = b'{"type":"Feature","geometry":null}\n'
    for bad in (good + b"5\n" + good, good + b'"x"\n' + good, good + b"[1]\n", b"x" + good):
        with pytest.raises(NotPlannable):
            _scan(bad, True, block=4)


@pytest.mark.parametrize("text", [b'{"type":"FeatureCollection","features":[{"a":"unterminated}]}',
                                  b'{"type":"FeatureCollection","features":[]}]'])
def test_text_that_is_not_json_raises(text: bytes) -> None:
    with pytest.raises((ValueError, NotPlannable)):
        _scan(text, False, block=4)


def test_geometry_collections_are_numbered_with_their_spans() -> None:
    """A GeometryCollection's members are not the scan's business: it reports which geometries are
    collections (by number, whatever the member order or the block cuts) and where each geometry's text is."""
    geometries = [
        {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 0]]]},
        {"type": "GeometryCollection", "geometries": [{"type": "Point", "coordinates": [1, 2]}]},
        None,
        {"geometries": [{"type": "MultiPolygon", "coordinates": [[[[0, 0], [1, 0], [1, 1], [0, 0]]]]},
                        {"type": "GeometryCollection", "geometries": [{"type": "LineString",
                                                                       "coordinates": [[0, 0], [5, 5]]}]}],
         "type": "GeometryCollection"},
        {"type": "GeometryCollection", "geometries": []},  # no coordinates: not counted (GDAL: empty)
    ]
    feats = [{"type": "Feature", "properties": {"i": i}, "geometry": g} for i, g in enumerate(geometries)]
    data = json.dumps({"type": "FeatureCollection", "features": feats}, indent=1).encode()
    for block in (3, 17, 4096):
        scan, _ = _scan(data, False, block=block)
        assert scan.collections == {1, 3}, block
        assert scan.geometry_types == {"Polygon"}
        spans = scan.geometry_spans
        assert [json.loads(data[a:b]) for a, b in spans] == geometries, block
