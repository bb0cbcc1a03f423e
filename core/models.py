"""Records and messages of the orchestrator."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field


class JobStatus(StrEnum):
    QUEUED = "queued"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class TaskStatus(StrEnum):
    QUEUED = "queued"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    RETRYING = "retrying"
    CANCELLED = "cancelled"


def correlation_id() -> str:
    return uuid.uuid4().hex[:8]


class JobRecord(BaseModel):
    job_id: str
    job_type: str
    parameters: dict[str, Any]
    status: JobStatus = JobStatus.QUEUED
    stage: int = 1
    total_stages: int
    stage_results: dict[str, Any] = Field(default_factory=dict)
    metadata: dict[str, Any] = Field(default_factory=dict)
    result_data: dict[str, Any] | None = None
    error_details: dict[str, Any] | None = None
    run: int = 1
    stage_timings: dict[str, Any] = Field(default_factory=dict)
    cleaned_up_at: datetime | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    completed_at: datetime | None = None


class TaskRecord(BaseModel):
    task_id: str
    parent_job_id: str
    job_type: str
    task_type: str
    stage: int
    task_index: int
    parameters: dict[str, Any] = Field(default_factory=dict)
    status: TaskStatus = TaskStatus.QUEUED
    result_data: dict[str, Any] | None = None
    error_details: str | None = None
    attempts: int = 0
    created_at: datetime | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None


class TaskDefinition(BaseModel):
    """What a job's create_tasks_for_stage returns for one task."""

    task_id: str
    task_type: str
    parameters: dict[str, Any] = Field(default_factory=dict)


class JobQueueMessage(BaseModel):
    """Asks a worker to create (fan out) the tasks of one stage of a job."""

    job_id: str
    job_type: str
    stage: int
    run: int = 1
    parameters: dict[str, Any] = Field(default_factory=dict)
    correlation_id: str = Field(default_factory=correlation_id)
    trace_context: dict[str, str] = Field(default_factory=dict)  # W3C traceparent of the sender's span

    @property
    def message_id(self) -> str:
        return f"job:{self.job_id}:r{self.run}:s{self.stage}"


class TaskQueueMessage(BaseModel):
    """Asks a worker to run one task; parameters live on the task row, not in the message."""

    task_id: str
    parent_job_id: str
    job_type: str
    task_type: str
    stage: int
    attempt: int = 1
    run: int = 1
    correlation_id: str = Field(default_factory=correlation_id)
    trace_context: dict[str, str] = Field(default_factory=dict)  # W3C traceparent of the sender's span

    @property
    def message_id(self) -> str:
        return f"task:{self.task_id}:r{self.run}:a{self.attempt}"


class TaskResult(BaseModel):
    task_id: str
    task_type: str
    stage: int
    task_index: int
    status: TaskStatus
    result_data: dict[str, Any] = Field(default_factory=dict)
    error_details: str | None = None


class JobExecutionContext(BaseModel):
    job_id: str
    job_type: str
    current_stage: int
    total_stages: int
    parameters: dict[str, Any]
    task_results: list[TaskResult] = Field(default_factory=list)
    stage_timings: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime | None = None
