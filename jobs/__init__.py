"""Job types, registered explicitly by name."""

from __future__ import annotations

from jobs.base import JobBase, Stage
from jobs.hello_world import HelloWorldJob

ALL_JOBS: dict[str, type[JobBase]] = {
    HelloWorldJob.job_type: HelloWorldJob,
}

__all__ = ["ALL_JOBS", "JobBase", "Stage"]
