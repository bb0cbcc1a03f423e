"""Job types, registered explicitly by name."""

from __future__ import annotations

from jobs.base import JobBase, Stage
from jobs.hello_world import HelloWorldJob
from jobs.ingest_vector import IngestVectorJob

ALL_JOBS: dict[str, type[JobBase]] = {
    HelloWorldJob.job_type: HelloWorldJob,
    IngestVectorJob.job_type: IngestVectorJob,
}

__all__ = ["ALL_JOBS", "JobBase", "Stage"]
