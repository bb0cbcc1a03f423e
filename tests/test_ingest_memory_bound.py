"""A real worker's peak RSS while it loads the original countries-maritime-10m GeoJSON (38 MB, 250 heavy
polygons, 167 of them invalid and repaired): within the 400 MB bound, the file read in several parts."""

from __future__ import annotations

import time

import pytest

from bench.rss import RssSampler
from tests import corpus
from tests import vector_files as vf
from tests.helpers import job_status, submit

pytestmark = pytest.mark.slow
MEMORY_BOUND = 400 * 2**20


def test_countries_maritime_geojson_loads_in_parts_within_the_memory_bound(db, workers, nonce):
    path = corpus.npm_file(*corpus.COUNTRIES_MARITIME)
    blob = vf.upload(f"{nonce}/countries.geojson", path.read_bytes())
    (proc,) = workers.start(1, concurrency=2)
    time.sleep(3)  # the worker has imported what it needs
    with RssSampler({"worker": lambda: [proc.pid]}, interval=0.05) as sampler:
        job_id = submit("ingest_vector", {"blob_name": blob, "file_extension": "geojson", "table_name": f"m_{nonce}"})
        deadline = time.time() + 600
        while job_status(job_id) not in ("completed", "failed") and time.time() < deadline:
            time.sleep(0.2)
    job = vf.job_row(db, job_id)
    assert job["status"] == "completed", job["error_details"]
    s = job["result_data"]
    assert s["summary"]["total_chunks"] > 1 and s["summary"]["total_rows_uploaded"] == 250
    assert 0 < sampler.peaks["worker"] <= MEMORY_BOUND, f"worker peak {sampler.peaks['worker'] / 2**20:.0f} MB"
    print(
        f"\nstages={s['seconds_per_stage']} chunks={s['summary']['total_chunks']} "
        f"rows={s['summary']['total_rows_uploaded']} worker_peak_mb={sampler.peaks['worker'] / 2**20:.0f} "
        f"baseline_mb={sampler.baseline.get('worker', 0) / 2**20:.0f}"
    )
