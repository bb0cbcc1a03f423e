"""Submitting a job: validate, hash, look up the existing job first, then check resources, then queue.

The idempotency lookup comes before any check of the outside world, so resubmitting a running
or finished job answers with that job, never with "table exists". The one thing read outside first
is the version of the job's input (a file's ETag), which is part of the job id: a changed file is a
new job. A failed or cancelled job submitted again runs again; so does a completed one whose output
has since been removed (its table dropped), after the submit-time checks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from config import get_settings
from core import state
from core.errors import JobValidationError, ResourceNotFoundError
from core.machine import CoreMachine
from core.models import JobRecord
from infrastructure import database


class UnknownJobType(ResourceNotFoundError):
    def __init__(self, job_type: str, known: list[str]) -> None:
        super().__init__(f"unknown job type '{job_type}'. Registered job types: {', '.join(sorted(known))}")
        self.known = known


@dataclass
class Submission:
    job_id: str
    job_type: str
    status: str  # created | already_completed | queued | processing | rerun
    parameters: dict[str, Any]
    job: JobRecord | None = None
    queue_info: dict[str, Any] = field(default_factory=dict)
    rerun_from_stage: int | None = None
    reason: str | None = None  # why a finished job runs again

    @property
    def idempotent(self) -> bool:
        return self.status not in ("created", "rerun")


def _storable_text(text: str) -> bool:
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # an unpaired surrogate ("\ud800" in the JSON)
        return False
    return True


def _unstorable(value: Any, path: str) -> str | None:
    """The parameter path of the first value PostgreSQL's jsonb cannot hold, or None."""
    if isinstance(value, str):
        return None if _storable_text(value) else path
    if isinstance(value, dict):
        for key, item in value.items():
            if not _storable_text(str(key)):
                return path or "body"
            found = _unstorable(item, f"{path}.{key}" if path else str(key))
            if found:
                return found
    if isinstance(value, list):
        for i, item in enumerate(value):
            found = _unstorable(item, f"{path}.{i}")
            if found:
                return found
    return None


def check_storable(params: dict[str, Any]) -> None:
    """Refuse NUL characters and unpaired surrogates anywhere in the parameters (a 400, not a 500)."""
    path = _unstorable(params, "")
    if path:
        raise JobValidationError(
            f"'{path}' holds a NUL character or an unpaired surrogate, which PostgreSQL cannot store",
            field=path,
        )


def submit_job(job_type: str, raw_params: Any, machine: CoreMachine | None = None) -> Submission:
    machine = machine or CoreMachine()
    job_cls = machine.jobs.get(job_type)
    if job_cls is None:
        raise UnknownJobType(job_type, list(machine.jobs))
    params = job_cls.validate_parameters(raw_params)
    check_storable(params)
    params |= job_cls.source_version(params)
    job_id = job_cls.generate_job_id(params)

    with database.connection() as conn:
        existing = state.get_job(conn, job_id)
        gone = job_cls.output_missing(existing, conn) if existing and existing.status == "completed" else None
    if existing is not None and existing.status in ("failed", "cancelled"):
        with database.connection() as conn:
            job_cls.check_resources(existing.parameters, conn)
        verb = "failed" if existing.status == "failed" else "been cancelled"
        return _rerun(machine, existing, f"the job had {verb}")
    if gone:
        with database.connection() as conn:
            job_cls.check_resources(existing.parameters, conn)  # type: ignore[union-attr]
        return _rerun(machine, existing, gone)  # type: ignore[arg-type]
    if existing is not None:
        status = "already_completed" if existing.status == "completed" else existing.status
        return Submission(job_id, job_type, status, existing.parameters, existing)

    with database.connection() as conn:
        job_cls.check_resources(params, conn)
    record = JobRecord(
        job_id=job_id,
        job_type=job_type,
        parameters=params,
        total_stages=job_cls.total_stages(),
        metadata=job_cls.metadata(params),
    )
    settings = get_settings()
    with database.connection() as conn:
        if not state.insert_job(conn, record):
            conn.rollback()
            current = state.get_job(conn, job_id)
            assert current is not None
            return Submission(job_id, job_type, current.status, current.parameters, current)
        machine.send_job_message(conn, record, 1)
    machine.queue.after_commit()
    msg = machine.job_message(record, 1)
    return Submission(
        job_id,
        job_type,
        "created",
        params,
        record,
        queue_info={
            "queued": True,
            "queue_type": machine.queue.backend,
            "queue_name": settings.jobs_queue,
            "message_id": msg.message_id,
        },
    )


def _rerun(machine: CoreMachine, job: JobRecord, reason: str) -> Submission:
    """A finished job submitted again re-runs from the stage its job type says (after cleaning up)."""
    job_cls = machine.jobs[job.job_type]
    if job.cleaned_up_at is None:
        machine.cleanup_job(job, failed=job.status != "completed")
    completed = job.status == "completed"
    from_stage = 1 if completed else job_cls.restart_stage(job.stage)
    with database.connection() as conn:
        current = state.get_job(conn, job.job_id, lock=True)
        if current is None or current.status != job.status:  # someone else re-ran it first
            assert current is not None
            return Submission(job.job_id, job.job_type, current.status, current.parameters, current)
        run = state.prepare_rerun(conn, current, from_stage)
        current.run = run
        machine.send_job_message(conn, current, from_stage)
    machine.queue.after_commit()
    return Submission(
        job.job_id,
        job.job_type,
        "rerun",
        job.parameters,
        current,
        rerun_from_stage=from_stage,
        reason=reason,
        queue_info={"queued": True, "queue_type": machine.queue.backend, "queue_name": get_settings().jobs_queue},
    )
