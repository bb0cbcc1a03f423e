"""The benchmark's pure parts: seeded data generation and report rendering. Runs no benchmark.

The suite's session fixtures (test database, blob emulator) are overridden here by name, so this
file runs on its own in well under a second without any service.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import shapely

from bench import data, report


@pytest.fixture(scope="session")
def azurite() -> Iterator[None]:
    yield


@pytest.fixture(scope="session")
def database() -> Iterator[str]:
    yield ""


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_same_seed_same_values_other_seed_other_values() -> None:
    for kind in ("gpkg", "csv", "geojson"):
        assert data.table_digest(kind, 500, seed=7) == data.table_digest(kind, 500, seed=7)
        assert data.table_digest(kind, 500, seed=7) != data.table_digest(kind, 500, seed=8)


def test_a_larger_scale_starts_with_the_rows_of_a_smaller_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data, "BATCH_ROWS", 100)
    for kind in ("gpkg", "csv"):
        small = list(data.iter_batches(kind, 100, seed=3))
        large = list(data.iter_batches(kind, 250, seed=3))
        assert len(small) == 1 and [len(t) for t in large] == [100, 100, 50]
        assert small[0].equals(large[0])
        assert large[1].column("id")[0].as_py() == 101
    monkeypatch.undo()
    assert data.rows_for("gpkg", 1) == 1_000_000
    assert data.rows_for("gpkg", 10) == 10_000_000
    assert data.rows_for("geojson", 0.01) == 2_000
    assert data._batches(2_500_000) == [(0, 1_000_000), (1, 1_000_000), (2, 500_000)]


def test_polygons_are_valid_octagons_with_seven_attributes() -> None:
    tbl = data.polygon_batch(1, "gpkg", 0, 0, 200)
    assert tbl.column_names == ["id", "population", "area_m2", "ratio", "name", "category", "survey_date", "geom"]
    geoms = shapely.from_wkb(tbl.column("geom").to_numpy(zero_copy_only=False))
    assert shapely.is_valid(geoms).all()
    assert (shapely.get_num_coordinates(geoms) == data.VERTICES + 1).all()
    assert str(tbl.schema.field("survey_date").type) == "date32[day]"


def test_generated_files_are_byte_identical(tmp_path: Path) -> None:
    for kind in ("csv", "gpkg", "geojson"):
        a = data.ensure_dataset(kind, 0.0002, seed=11, data_dir=tmp_path / "a")
        b = data.ensure_dataset(kind, 0.0002, seed=11, data_dir=tmp_path / "b")
        assert a.rows == data.rows_for(kind, 0.0002)
        assert _sha(a.path) == _sha(b.path), kind
    lines = (tmp_path / "a" / data.cached_path("csv", 200, 11).name).read_text().splitlines()
    assert lines[0] == '"id","lat","lon","count","value","name","category","survey_date"'
    assert len(lines) == 201


def _results() -> dict:
    def run(peer: str, seconds: float, **extra: object) -> dict:
        return {"peer": peer, "seconds": seconds, "peak_rss_mb": {"client": 50.0}, **extra}

    geoetl = {"worker_peak_rss_mb": 310.0, "peak_rss_mb": {"api": 230.0, "worker-1": 310.0},
              "baseline_rss_mb": {"worker-1": 200.0}}
    runs = [run("ogr2ogr_tuned", s) for s in (10.0, 12.0, 11.0)]
    runs += [run("ogr2ogr_default", s) for s in (20.0, 22.0, 21.0)]
    runs += [run("geoetl", s, **geoetl) for s in (9.0, 8.0, 30.0)]
    runs.append({"peer": "geoetl", "error": "job failed: boom", "seconds": None})
    return {
        "environment": {"date": "2025-01-01 00:00 UTC", "machine": {"cores": 2}, "versions": {}},
        "sections": {
            "ingest": {"scale": 1, "seed": 1, "runs": 3, "env": {"date": "d"}, "datasets": {
                "gpkg": {"rows": 1_000_000, "file_mb": 270.0, "upload_s": [1.5], "runs": runs,
                         "skipped": {"geopandas": "too big"}},
            }},
            "orchestration": {"n": 1000, "runs": [{"tasks_per_s": 600.0, "dispatch_p50_ms": 700.0}]},
        },
    }


def test_summary_takes_medians_and_ratios_against_tuned_ogr2ogr() -> None:
    s = report.summarise_ingest(_results()["sections"]["ingest"])["gpkg"]
    assert s["ogr2ogr_tuned"]["median_s"] == 11.0
    assert s["ogr2ogr_default"]["ratio"] == pytest.approx(21.0 / 11.0, abs=0.01)
    assert s["geoetl"]["median_s"] == 9.0
    assert s["geoetl"]["failed"] == 1
    assert s["geopandas"]["skipped"] == "too big"


def test_report_keeps_the_history_section_across_renders() -> None:
    history = "- abc123 binary COPY: gpkg 2.1x -> 1.4x (scale 1)\n- def456 streaming reader: worker 900 -> 350 MB\n"
    first = report.render(_results(), history)
    assert report.extract_history(first) == history
    again = report.render(_results(), report.extract_history(first))
    assert again == first
    assert first.index(report.HISTORY_HEADING) > first.index("## Ingest")
    assert "| geoetl end to end ≤ 1.0x tuned ogr2ogr, 1M GeoPackage | 0.82x | yes |" in first
    assert "| worker peak RSS ≤ 400 MB, 1M GeoPackage | 310 MB (ingest runs (max over runs); d, geoetl ?) | yes |" \
        in first
    assert "hello_world n=1000 ≥ 500 tasks/s | 600 tasks/s | yes" in first


def test_a_report_without_history_gets_the_placeholder() -> None:
    assert report.extract_history("# Benchmarks\n\n## Ingest\n") == ""
    assert report.DEFAULT_HISTORY in report.render(_results(), "")
