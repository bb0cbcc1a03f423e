"""FeatureCollection -> GeoJSON text sequence, streamed: exact features, any layout, bounded memory."""

from __future__ import annotations

import json

import pyogrio
import pytest

from services.vector import geojson_stream
from services.vector.geojson_stream import NotAFeatureCollection, to_sequence


def features(n):
    return [{"type": "Feature", "id": i, "properties": {"name": f'f "{i}" {{[,]}}', "v": i * 1.5, "u": "é✓"},
             "geometry": {"type": "Point", "coordinates": [i * 0.1, -i * 0.2]}} for i in range(n)]


@pytest.fixture(params=[7, 64, 4 * 1024 * 1024], ids=["tiny-blocks", "small-blocks", "default-blocks"])
def block(request, monkeypatch):
    monkeypatch.setattr(geojson_stream, "BLOCK", request.param)
    return request.param


@pytest.mark.parametrize("indent", [None, 2])
def test_roundtrip_any_layout_and_block_size(tmp_path, block, indent):
    doc = {"type": "FeatureCollection", "crs": {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::3857"}},
           "features": features(50), "bbox": [0, -10, 5, 0]}
    src = tmp_path / "a.geojson"
    src.write_text(json.dumps(doc, indent=indent, ensure_ascii=False))
    info = to_sequence(src, tmp_path / "a.geojsons")
    assert info.features == 50 and info.crs_name == "urn:ogc:def:crs:EPSG::3857"
    assert info.members["bbox"] == [0, -10, 5, 0]
    records = (tmp_path / "a.geojsons").read_text().split("\x1e")[1:]
    assert [json.loads(r) for r in records] == doc["features"]
    df = pyogrio.read_dataframe(tmp_path / "a.geojsons")
    assert len(df) == 50 and df["name"][3] == 'f "3" {[,]}' and df["u"][0] == "é✓"


def test_empty_collection_and_members_after_features(tmp_path):
    src = tmp_path / "e.geojson"
    src.write_text('{"features": [], "type": "FeatureCollection"}')
    assert to_sequence(src, tmp_path / "e.geojsons").features == 0


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ('{"type": "Feature", "properties": {}, "geometry": null}', NotAFeatureCollection),
        ('[1, 2]', NotAFeatureCollection),
        ('{"type": "FeatureCollection"}', NotAFeatureCollection),
        ('{"type": "FeatureCollection", "features": [{"type": "Feature"', ValueError),
        ('{"type": "FeatureCollection", "features": [1, 2]}', ValueError),
        ('{"type": "FeatureCollection", "features": []} trailing', ValueError),
        ('{"type": "FeatureCollection", "features": [{}] ', ValueError),
    ],
)
def test_malformed_documents(tmp_path, text, error):
    src = tmp_path / "m.geojson"
    src.write_text(text)
    with pytest.raises(error):
        to_sequence(src, tmp_path / "m.geojsons")


def test_memory_stays_bounded(tmp_path, monkeypatch):
    """A 20 MB collection is rewritten holding a few blocks (reads, slices), not a copy of the document."""
    import tracemalloc

    monkeypatch.setattr(geojson_stream, "BLOCK", 1024 * 1024)
    src = tmp_path / "big.geojson"
    with open(src, "w") as f:
        f.write('{"type": "FeatureCollection", "features": [')
        for i, feat in enumerate(features(120_000)):
            f.write(("," if i else "") + json.dumps(feat))
        f.write("]}")
    size = src.stat().st_size
    tracemalloc.start()
    info = to_sequence(src, tmp_path / "big.geojsons")
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert info.features == 120_000 and size > 15_000_000
    assert peak < 6 * geojson_stream.BLOCK + 1_000_000 < size / 2, (peak, size)
