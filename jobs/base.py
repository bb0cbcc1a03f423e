"""What every job declares: stages, a parameter model, how to fan out a stage, how to summarise."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import psycopg
from pydantic import BaseModel, ConfigDict, ValidationError

from core.errors import JobValidationError
from core.models import JobExecutionContext, JobRecord, TaskDefinition


@dataclass(frozen=True)
class Stage:
    number: int
    name: str
    task_type: str
    parallelism: Literal["single", "fan_out"]
    description: str = ""


class JobParameters(BaseModel):
    """Base of every job's parameter model: unknown parameters are an error, not silently kept."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


def generate_task_id(job_id: str, stage: int, key: str) -> str:
    """Deterministic, readable task ids: the same job, stage and key always give the same id."""
    return f"{job_id[:16]}-s{stage}-{key}"


def describe_validation_error(exc: ValidationError) -> tuple[str, str | None]:
    """One sentence per problem, naming the parameter, for a 400 body."""
    parts = []
    first_field = None
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "body"
        first_field = first_field or loc
        if err["type"] == "missing":
            parts.append(f"'{loc}' is required")
        elif err["type"] == "extra_forbidden":
            parts.append(f"'{loc}' is not a parameter of this job")
        else:
            parts.append(f"'{loc}': {err['msg']}")
    return "; ".join(parts), first_field


class JobBase:
    job_type: ClassVar[str]
    description: ClassVar[str] = ""
    stages: ClassVar[list[Stage]]
    Parameters: ClassVar[type[JobParameters]]

    # --- submission
    @classmethod
    def validate_parameters(cls, raw: Any) -> dict[str, Any]:
        """Validated, defaults-filled, JSON-ready parameters; raises JobValidationError."""
        if not isinstance(raw, dict):
            raise JobValidationError("the request body must be a JSON object of job parameters")
        try:
            model = cls.Parameters.model_validate(raw)
        except ValidationError as exc:
            message, field = describe_validation_error(exc)
            raise JobValidationError(message, field=field) from None
        return cls.check_parameters(model.model_dump(mode="json", by_alias=True))

    @classmethod
    def check_parameters(cls, params: dict[str, Any]) -> dict[str, Any]:
        """Rules beyond the model's (normalising values too); raise JobValidationError."""
        return params

    @classmethod
    def generate_job_id(cls, params: dict[str, Any]) -> str:
        """SHA-256 of the job type and the canonical parameters: equal requests, equal ids."""
        canonical = json.dumps({"job_type": cls.job_type, "parameters": params}, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    @classmethod
    def check_resources(cls, params: dict[str, Any], conn: psycopg.Connection) -> None:
        """Submit-time checks against the outside world (blobs, tables); raise to refuse."""

    @classmethod
    def metadata(cls, params: dict[str, Any]) -> dict[str, Any]:
        return {"description": cls.description, "created_by": cls.__name__}

    @classmethod
    def total_stages(cls) -> int:
        return len(cls.stages)

    @classmethod
    def stage(cls, number: int) -> Stage:
        return cls.stages[number - 1]

    # --- running
    @classmethod
    def setup_stage(
        cls, conn: psycopg.Connection, job: JobRecord, stage: int, previous_results: list[dict[str, Any]]
    ) -> None:
        """Work done once, before a stage fans out, in the transaction that creates its tasks."""

    @classmethod
    def create_tasks_for_stage(
        cls, stage: int, params: dict[str, Any], job_id: str, previous_results: list[dict[str, Any]]
    ) -> list[TaskDefinition]:
        raise NotImplementedError

    @classmethod
    def finalize_job(cls, context: JobExecutionContext) -> dict[str, Any]:
        return {"job_type": cls.job_type, "stages_completed": context.current_stage}

    @classmethod
    def cleanup(cls, job: JobRecord, failed: bool) -> None:
        """Remove what a run leaves behind (intermediate files; on failure, partial outputs). Idempotent."""

    @classmethod
    def reconcile(cls) -> dict[str, int]:
        """Janitor hook: repair what outlives jobs (outputs removed behind our back); counts by kind."""
        return {}

    @classmethod
    def source_version(cls, params: dict[str, Any]) -> dict[str, Any]:
        """What the job reads, as found at submit (e.g. a file's ETag): part of the job id, so a changed
        input is a new job and an unchanged one the same job. Empty when nothing outside is read."""
        return {}

    @classmethod
    def output_missing(cls, job: JobRecord, conn: psycopg.Connection) -> str | None:
        """Why a completed job's output no longer exists (so that submitting it again re-runs it), or None."""
        return None

    @classmethod
    def restart_stage(cls, failed_stage: int) -> int:
        """The stage a failed job re-runs from when it is submitted again."""
        return failed_stage

    @classmethod
    def progress_details(cls, conn: psycopg.Connection, job: JobRecord) -> dict[str, Any]:
        """Job-specific progress for the status endpoint."""
        return {}
