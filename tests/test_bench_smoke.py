"""The benchmark's pure parts: seeded data generation and report rendering. Runs no benchmark.

The suite's session fixtures (test database, blob emulator) are overridden here by name, so this
file runs on its own in well under a second without any service.
"""

from __future__ import annotations

import hashlib
import json
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


def test_report_keeps_the_serving_section_across_renders() -> None:
    """The serving benchmark writes its own section into the report: an ingest render keeps it as it is."""
    serving = "## Serving: sequential requests on 200k and 10M rows\n\n| request | rows |\n| --- | ---: |\n"
    first = report.with_kept(report.render(_results(), "- abc123 a change\n"), None) + "\n" + serving
    again = report.with_kept(report.render(_results(), report.extract_history(first)), first)
    assert again.endswith(serving) and again.count("## Serving") == 1
    assert report.extract_history(again) == "- abc123 a change\n"
    assert report.kept_sections(again) == serving
    assert report.kept_sections(report.render(_results(), "")) == ""


def test_a_report_without_history_gets_the_placeholder() -> None:
    assert report.extract_history("# Benchmarks\n\n## Ingest\n") == ""
    assert report.DEFAULT_HISTORY in report.render(_results(), "")


def test_shapefile_and_geoparquet_hold_the_geopackage_rows(tmp_path: Path) -> None:
    import pyarrow.parquet as pq
    import pyogrio

    assert data.table_digest("shp", 300, seed=5) == data.table_digest("gpkg", 300, seed=5)
    assert data.table_digest("parquet", 300, seed=5) == data.table_digest("gpkg", 300, seed=5)
    gpkg = data.ensure_dataset("gpkg", 0.0003, seed=5, data_dir=tmp_path)
    shp = data.ensure_dataset("shp", 0.0003, seed=5, data_dir=tmp_path)
    parquet = data.ensure_dataset("parquet", 0.0003, seed=5, data_dir=tmp_path)
    assert [f.suffix for f in shp.files] == [".shp", ".shx", ".dbf", ".prj", ".cpg"]
    assert shp.path.with_suffix(".cpg").read_text() == "UTF-8"
    assert shp.size_bytes == sum(f.stat().st_size for f in shp.files) > shp.path.stat().st_size
    assert not list(tmp_path.glob(".*")), "no temporary files left beside the datasets"

    ref = pyogrio.read_dataframe(gpkg.path)
    from_shp = pyogrio.read_dataframe(shp.path)
    from_parquet = pq.read_table(parquet.path)
    assert len(ref) == len(from_shp) == from_parquet.num_rows == 300
    assert from_shp.crs.to_epsg() == 4326
    for col in ("id", "population", "area_m2", "ratio", "name", "category"):
        assert ref[col].tolist() == from_shp[col].tolist(), col
        assert ref[col].tolist() == from_parquet.column(col).to_pylist(), col
    assert [str(d) for d in ref["survey_date"]] == [str(d) for d in from_shp["survey_dat"]]
    assert [d.isoformat() for d in from_parquet.column("survey_date").to_pylist()] == \
        [str(d)[:10] for d in ref["survey_date"]]
    # a Shapefile stores outer rings clockwise: the same polygons, ring order aside
    ref_geoms = shapely.normalize(ref.geometry.values)
    assert shapely.equals_exact(ref_geoms, shapely.normalize(from_shp.geometry.values), 0).all()
    from_wkb = shapely.normalize(shapely.from_wkb(from_parquet.column("geom").to_pylist()))
    assert shapely.equals_exact(ref_geoms, from_wkb, 0).all()
    geo = json.loads(pq.read_schema(parquet.path).metadata[b"geo"])
    assert geo["primary_column"] == "geom" and geo["columns"]["geom"]["encoding"] == "WKB"
    assert geo["columns"]["geom"]["crs"]["id"] == {"authority": "EPSG", "code": 4326}


def test_shapefile_and_geoparquet_files_are_byte_identical_and_cut_in_row_groups(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pyarrow.parquet as pq

    monkeypatch.setattr(data, "PARQUET_ROW_GROUP", 100)
    for kind in ("shp", "parquet"):
        a = data.ensure_dataset(kind, 0.00025, seed=2, data_dir=tmp_path / "a")
        b = data.ensure_dataset(kind, 0.00025, seed=2, data_dir=tmp_path / "b")
        assert [_sha(f) for f in a.files] == [_sha(f) for f in b.files], kind
    meta = pq.ParquetFile(tmp_path / "a" / data.cached_path("parquet", 250, 2).name).metadata
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [100, 100, 50]


def test_the_heavy_real_polygons_are_the_corpus_file() -> None:
    ds = data.heavy_dataset()
    assert ds.kind == data.HEAVY and ds.rows == 250
    assert ds.path.name == "map.geo.json" and ds.size_bytes > 30_000_000


def test_parquet_peers_load_the_geopackage_of_the_same_rows_without_a_gdal_parquet_driver(tmp_path: Path) -> None:
    from bench import peers

    parquet = data.ensure_dataset("parquet", 0.0001, seed=4, data_dir=tmp_path)
    src, why = peers.peer_source("ogr2ogr_tuned", parquet)
    if peers.gdal_has_driver("Parquet"):
        assert (src, why) == (parquet, None)
    else:
        assert src.kind == "gpkg" and src.rows == parquet.rows and src.path.parent == tmp_path
        assert "has no Parquet driver" in str(why)
    assert peers.peer_source("geopandas", parquet) == (parquet, None)
    heavy = data.Dataset(kind=data.HEAVY, path=tmp_path / "x.json", rows=1, layer="", seed=0)
    assert not peers.runs_on("ogr2ogr_makevalid", parquet) and peers.runs_on("ogr2ogr_makevalid", heavy)
    assert peers.peer_available("geopandas", heavy) and peers.peer_available("ogr2ogr_default", heavy)


def test_own_time_is_counted_by_innermost_frame() -> None:
    from bench.geoetl_run import own_time

    raw = ("<module> (w.py:1);run (w.py:10);make_valid (shapely/constructive.py:700) 30\n"
           "<module> (w.py:1);run (w.py:10) 5\n"
           "<module> (w.py:1);copy (t.py:3);make_valid (shapely/constructive.py:700) 7\n"
           "garbage line\n")
    assert own_time(raw) == {"make_valid (shapely/constructive.py:700)": 37, "run (w.py:10)": 5}


def test_isolate_points_the_settings_at_the_benchmarks_own_stack(monkeypatch: pytest.MonkeyPatch) -> None:
    from bench import geoetl_run
    from config import get_settings, reset_settings

    for key in ("API_PORT", "BLOB_PORT", "PUBLIC_BASE_URL", "AZURE_STORAGE_CONNECTION_STRING", "GEOETL_RUN_DIR",
                "DATABASE_URL"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(geoetl_run, "RUN_DIR", geoetl_run.RUN_DIR)
    monkeypatch.setenv("DATABASE_URL", "postgresql://u:p@db.example:5433/geoetl?sslmode=disable")
    reset_settings()
    try:
        assert geoetl_run.isolate(None, None, None) == {}
        env = geoetl_run.isolate(7145, 10145, "geoetl_bench_wt")
        s = get_settings()
        assert s.dsn == "postgresql://u:p@db.example:5433/geoetl_bench_wt?sslmode=disable"
        assert "BlobEndpoint=http://127.0.0.1:10145/devstoreaccount1;" in s.azure_storage_connection_string \
            .get_secret_value()
        assert "AccountKey=" in s.azure_storage_connection_string.get_secret_value()
        assert s.public_base_url == "http://127.0.0.1:7145" and s.api_port == 7145
        assert env["GEOETL_RUN_DIR"] == ".run/bench-7145-10145"
        assert geoetl_run.RUN_DIR == geoetl_run.ROOT / ".run" / "bench-7145-10145"
    finally:
        monkeypatch.undo()
        reset_settings()


def _results_13() -> dict:
    res = _results()
    ds = res["sections"]["ingest"]["datasets"]
    full = {"worker_peak_rss_mb": 300.0, "peak_rss_mb": {"worker-1": 300.0}}

    def runs(tuned: float, geoetl: float, rss: float = 300.0, **extra: object) -> list[dict]:
        return [{"peer": "ogr2ogr_tuned", "seconds": tuned, **extra},
                {"peer": "geoetl", "seconds": geoetl, **full, "worker_peak_rss_mb": rss, "features_repaired": 167,
                 "seconds_per_stage": {"prepare_chunks": 1.0, "upload_chunks": 4.0},
                 "task_seconds": {"1": {"tasks": 1, "sum_s": 1.0, "max_s": 1.0}}}]

    source = {"file": "polygons_1000000_seed1_v1.gpkg", "why": "GDAL 3.6.2 has no Parquet driver: ogr2ogr loads"
              " the GeoPackage of the same rows"}
    ds["csv"] = {"rows": 1_000_000, "runs": runs(10.0, 9.0)}
    ds["shp"] = {"rows": 10_000, "runs": runs(10.0, 13.0)}
    ds["parquet"] = {"rows": 1_000_000, "runs": runs(10.0, 8.0, source=source)}
    ds["maritime"] = {"rows": 250, "runs": [*runs(20.0, 50.0, rss=900.0),
                                            {"peer": "ogr2ogr_makevalid", "seconds": 60.0}]}
    ds["shp"]["profile_run"] = {**runs(0, 14.0)[1], "profile": {
        "tool": "py-spy record", "samples": 1000, "errors": [],
        "top_own": [{"function": f"f{i} (m.py:{i})", "samples": 300 - 40 * i, "share": (300 - 40 * i) / 1000}
                    for i in range(7)]}}
    ds["maritime"]["profile_run"] = {**runs(0, 55.0)[1], "profile": {
        "tool": None, "samples": 0, "top_own": [], "errors": ["py-spy on worker pid 12 (exit 1): Permission denied"]}}
    return res


def test_issue_13_targets_and_where_the_time_goes() -> None:
    md = report.render(_results_13())
    assert md.count("## Targets") == 1
    assert "| 7 | geoetl end to end ≤ 1.0x tuned ogr2ogr, 1M GeoPackage | 0.82x | yes |" in md
    assert "| 13 | geoetl end to end ≤ 0.7x tuned ogr2ogr, 1M GeoPackage | 0.82x | **no** |" in md
    assert "| 13 | geoetl end to end ≤ 1.0x tuned ogr2ogr, 1M CSV | 0.90x | yes |" in md
    assert "| 13 | geoetl end to end ≤ 1.0x tuned ogr2ogr, 1M Shapefile | 1.30x (at 10k rows, not the 1M file) |" \
        " **no** |" in md
    assert "| 13 | geoetl end to end ≤ 1.0x tuned ogr2ogr, 1M GeoParquet | 0.80x; baseline: ogr2ogr on the" \
        " GeoPackage of the same rows | yes |" in md
    assert "| 13 | geoetl end to end ≤ 1.0x tuned ogr2ogr, 200k GeoJSON | not measured | - |" in md
    assert "| 13 | heavy real polygons (countries-maritime-10m): geoetl repairing ≤ 2.0x ogr2ogr tuned without" \
        " repair | 2.50x; 167 features repaired | **no** |" in md
    assert "| 13 | worker peak RSS ≤ 400 MB, heavy real polygons (countries-maritime-10m) | 900 MB | **no** |" in md
    assert "| 13 | worker peak RSS ≤ 400 MB, Shapefile | 300 MB (at 10k rows, not the 1M file) | yes |" in md
    assert "| maritime | 250 |" in md and "(b') ogr2ogr tuned -makevalid | 60.00 | 3.00x |" in md
    assert "GeoParquet (parquet): GDAL 3.6.2 has no Parquet driver" in md

    where = md[md.index("## Where the time goes"):md.index("## Orchestration")]
    assert "### Shapefile (shp): end to end 1.30x > 1.0x tuned ogr2ogr" in where
    assert "### heavy real polygons (countries-maritime-10m) (maritime): end to end 2.50x > 2.0x tuned ogr2ogr;" \
        " worker peak 900 MB > 400 MB" in where
    assert "### GeoPackage (gpkg): end to end 0.82x > 0.7x tuned ogr2ogr" in where
    assert "### CSV" not in where and "### GeoParquet" not in where
    assert "| `f0 (m.py:0)` | 300 | 30.0 % |" in where and "| `f4 (m.py:4)` | 140 | 14.0 % |" in where
    assert "f5 (m.py:5)" not in where  # the top 5 only (the JSON keeps more)
    assert "py-spy could not profile: `py-spy on worker pid 12 (exit 1): Permission denied`" in where
    assert "upload_chunks 4.00 s" in where and "stage 1: 1 tasks, 1.00 s summed" in where
    assert "no profiled run" in where  # the GeoPackage of _results() has none


def test_missed_targets_names_each_miss() -> None:
    s = report.summarise_ingest(_results_13()["sections"]["ingest"])
    assert report.missed_targets("csv", s["csv"]) == []
    assert report.missed_targets("maritime", s["maritime"]) == ["end to end 2.50x > 2.0x tuned ogr2ogr",
                                                              "worker peak 900 MB > 400 MB"]
    assert report.missed_targets("gpkg", {"ogr2ogr_tuned": {"ratio": 1.0}}) == []


def _cpu(wall: float, busy: float, **groups: float) -> dict:
    return {"wall_s": wall, "busy_s": busy, "cores": 2, "use": busy / (2 * wall), "cpu_s": groups}


def test_the_cpu_section_shows_the_median_runs_cores_and_the_floor_of_that_work() -> None:
    res = _results()
    runs = res["sections"]["ingest"]["datasets"]["gpkg"]["runs"]
    for r in runs:
        if r["peer"] == "ogr2ogr_tuned":
            r["cpu"] = _cpu(r["seconds"], r["seconds"] * 1.5, postgres=r["seconds"] / 2, other=r["seconds"])
        elif r["peer"] == "geoetl" and r.get("seconds"):
            r["cpu"] = {**_cpu(r["seconds"], 14.0, workers=6.0, postgres=4.0, azurite=3.0, api=0.5, other=0.5),
                        "phases": [{"phase": "stage 2", **_cpu(5.0, 9.5, workers=5.0, postgres=2.5, azurite=2.0)},
                                   {"phase": "stage 3", **_cpu(3.0, 3.1, postgres=3.0, workers=0.004)}]}
    s = report.summarise_ingest(res["sections"]["ingest"])["gpkg"]
    assert s["geoetl"]["cpu"]["wall_s"] == 9.0  # the median run's meter, not the 30 s one
    md = report.render(res)
    cpu = md[md.index("## Where the cores go"):md.index("## Orchestration")]
    # tuned ogr2ogr: median run 11 s, 16.5 CPU s -> floor 8.25 s, 0.75x of its own median
    assert "| gpkg | (b) ogr2ogr tuned | 11.00 | 16.50 | 75 % | - | 5.50 | - | - | 11.00 | 8.25 | 0.75x |" in cpu
    # geoetl: 14 CPU s on 2 cores can never take less than 7 s: 0.64x of (b)'s 11 s
    assert "| gpkg | (d) geoetl end to end | 9.00 | 14.00 | 78 % | 6.00 | 4.00 | 3.00 | 0.50 | 0.50 | 7.00 | 0.64x |" \
        in cpu
    assert "(a) ogr2ogr default" not in cpu  # not metered: no row


def test_a_missed_target_shows_the_cpu_of_each_stage() -> None:
    res = _results_13()
    gpkg = res["sections"]["ingest"]["datasets"]["gpkg"]
    for r in gpkg["runs"]:
        if r["peer"] == "geoetl" and r.get("seconds"):
            r["cpu"] = {**_cpu(r["seconds"], 12.0, workers=5.0),
                        "phases": [{"phase": "stage 2", **_cpu(5.0, 9.5, workers=5.0, postgres=2.5, azurite=2.0)},
                                   {"phase": "stage 3", **_cpu(2.5, 2.6, postgres=2.5, workers=0.004)}]}
    md = report.render(res)
    where = md[md.index("### GeoPackage (gpkg)"):md.index("## Orchestration")]
    assert "  - stage 2: 5.00 s wall, 9.50 CPU s (95 % of the cores): workers 5.00, PostgreSQL 2.50, Azurite 2.00" \
        in where
    assert "  - stage 3: 2.50 s wall, 2.60 CPU s (52 % of the cores): PostgreSQL 2.50\n" in where


def test_the_cpu_meter_counts_a_process_tree_and_its_reaped_children() -> None:
    import os
    import subprocess
    import sys

    from bench.cpu import CpuMeter, tree_cpu

    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass"
    with CpuMeter({"me": lambda: [os.getpid()]}) as meter:
        subprocess.run([sys.executable, "-c", burn], check=True)  # a child that ends and is reaped
        meter.mark("child")
    child = meter.result()["phases"][0]
    assert child["cpu_s"]["me"] >= 0.3  # its CPU is in this process's reaped-children time
    assert child["busy_s"] >= child["cpu_s"]["me"] - 0.05  # the machine was busy at least that long
    assert meter.result()["cpu_s"]["me"] >= child["cpu_s"]["me"]
    assert tree_cpu(2**22 + 12345) == 0.0  # a pid that does not exist

    # a grandchild reaped by a child that still runs (a worker's repair child): in the child's tree
    parent = f"import subprocess, sys\nsubprocess.run([sys.executable, '-c', {burn!r}])\nprint('done', flush=True)\n" \
        "sys.stdin.read()"
    child = subprocess.Popen([sys.executable, "-c", parent], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "done"
        assert tree_cpu(child.pid) >= 0.3
    finally:
        child.communicate("")
