"""CoreMachine: turns job and task messages into state changes, one transaction per step.

Every step writes its state change and the messages it causes in one transaction (the queue
or the outbox lives in the same database), and settles the message it came from in that
transaction too when the backend allows. A message that arrives twice, or after its job
finished, changes nothing.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg

from config import Settings, get_settings
from core import state
from core.errors import is_retryable
from core.models import (
    JobExecutionContext,
    JobQueueMessage,
    JobRecord,
    TaskQueueMessage,
    TaskRecord,
)
from infrastructure import database, telemetry
from infrastructure.queues import MessageQueue, OutgoingMessage, get_queue
from jobs import ALL_JOBS, JobBase
from services import ALL_HANDLERS, Handler, TaskContext
from services.context import task_scope

log = logging.getLogger(__name__)

Settle = Callable[[psycopg.Connection], None]


def _no_settle(conn: psycopg.Connection) -> None:
    return None


@dataclass
class AfterCommit:
    """Work that must wait until the transaction is durable (cleanup outside any lock)."""

    cleanups: list[tuple[JobRecord, bool]] = field(default_factory=list)


class CoreMachine:
    def __init__(
        self,
        jobs: dict[str, type[JobBase]] | None = None,
        handlers: dict[str, Handler] | None = None,
        queue: MessageQueue | None = None,
        settings: Settings | None = None,
    ) -> None:
        self.jobs = jobs if jobs is not None else ALL_JOBS
        self.handlers = handlers if handlers is not None else ALL_HANDLERS
        self.queue = queue or get_queue()
        self.settings = settings or get_settings()

    # ------------------------------------------------------------------ messages
    def job_message(self, job: JobRecord, stage: int) -> OutgoingMessage:
        msg = JobQueueMessage(
            job_id=job.job_id, job_type=job.job_type, stage=stage, run=job.run, trace_context=telemetry.trace_context()
        )
        return OutgoingMessage(msg.message_id, msg.model_dump(mode="json"))

    def send_job_message(self, conn: psycopg.Connection, job: JobRecord, stage: int) -> None:
        self.queue.send(conn, self.settings.jobs_queue, [self.job_message(job, stage)])

    # ------------------------------------------------------------------ job messages
    def process_job_message(self, message: JobQueueMessage, settle: Settle = _no_settle) -> str:
        """Create the tasks of one stage (once), or finish the stage at once when it has none."""
        with telemetry.message_span("job", message.model_dump(), message.trace_context) as span:
            outcome = self._process_job_message(message, settle)
            span.set_attribute("geoetl.outcome", outcome)
            return outcome

    def _process_job_message(self, message: JobQueueMessage, settle: Settle) -> str:
        after = AfterCommit()
        try:
            with database.connection() as conn:
                outcome = self._fan_out(conn, message, after)
                settle(conn)
        except Exception as exc:
            if is_retryable(exc):
                raise  # the transport delivers the message again after a backoff (redelivery_delay)
            log.exception("stage %s of job %s could not start", message.stage, message.job_id)
            outcome = self._fail_from_job_message(message, exc, settle, after)
        self._after_commit(after)
        return outcome

    def _fan_out(self, conn: psycopg.Connection, message: JobQueueMessage, after: AfterCommit) -> str:
        job = state.get_job(conn, message.job_id, lock=True)
        if job is None:
            return "missing"
        if job.status not in state.ACTIVE_JOB or job.stage != message.stage or job.run != message.run:
            return "stale"
        if state.stage_has_tasks(conn, job.job_id, message.stage):
            return "duplicate"
        job_cls = self.jobs[job.job_type]
        previous = state.stage_results(conn, job.job_id, message.stage - 1) if message.stage > 1 else []
        state.mark_stage_started(conn, job.job_id, message.stage)
        job_cls.setup_stage(conn, job, message.stage, previous)
        tasks = job_cls.create_tasks_for_stage(message.stage, job.parameters, job.job_id, previous)
        if not tasks:
            self._stage_completed(conn, job.job_id, message.stage, after)
            return "empty_stage_completed"
        state.insert_tasks(conn, job, message.stage, tasks)
        self.queue.send(
            conn,
            self.settings.tasks_queue,
            [
                self._task_message(job, message.stage, t.task_id, t.task_type, attempt=1)
                for t in tasks
            ],
        )
        return f"fanned_out:{len(tasks)}"

    def _task_message(
        self, job: JobRecord, stage: int, task_id: str, task_type: str, attempt: int, delay: float = 0.0
    ) -> OutgoingMessage:
        msg = TaskQueueMessage(
            task_id=task_id,
            parent_job_id=job.job_id,
            job_type=job.job_type,
            task_type=task_type,
            stage=stage,
            attempt=attempt,
            run=job.run,
            trace_context=telemetry.trace_context(),
        )
        return OutgoingMessage(msg.message_id, msg.model_dump(mode="json"), delay)

    def _fail_from_job_message(
        self, message: JobQueueMessage, exc: BaseException, settle: Settle, after: AfterCommit
    ) -> str:
        details = {
            "error": f"{type(exc).__name__}: {exc}",
            "stage": message.stage,
            "task_id": None,
            "task_type": None,
            "phase": "creating the stage's tasks",
        }
        with database.connection() as conn:
            failed = self.fail_job(conn, None, message.job_id, details)
            settle(conn)
            if failed:
                job = state.get_job(conn, message.job_id)
                if job is not None:
                    after.cleanups.append((job, True))
        return "job_failed"

    # ------------------------------------------------------------------ task messages
    def process_task_message(self, message: TaskQueueMessage, settle: Settle = _no_settle) -> str:
        """Run a task; complete it, and maybe its stage and job, in the transaction of its effects."""
        with telemetry.message_span("task", message.model_dump(), message.trace_context) as span:
            outcome = self._process_task_message(message, settle)
            span.set_attribute("geoetl.outcome", outcome)
            return outcome

    def _process_task_message(self, message: TaskQueueMessage, settle: Settle) -> str:
        with database.connection() as conn:
            task = state.claim_task(conn, message.task_id, message.run)
            if task is None:
                state.cancel_orphan_task(conn, message.task_id)
                settle(conn)
                return "not_runnable"
        handler = self.handlers.get(task.task_type)
        after = AfterCommit()
        try:
            if handler is None:
                raise NotImplementedError(f"no handler is registered for task type '{task.task_type}'")
            with database.connection() as conn:
                ctx = TaskContext(
                    task_id=task.task_id,
                    job_id=task.parent_job_id,
                    job_type=task.job_type,
                    stage=task.stage,
                    attempt=task.attempts,
                    conn=conn,
                    run=message.run,
                )
                with task_scope(task.task_id, task.parent_job_id, conn):  # lets a cancel stop it
                    result = handler(task.parameters, ctx)
                if not isinstance(result, dict):
                    raise TypeError(f"handler of {task.task_type} returned {type(result).__name__}, not a dict")
                settle(conn)  # before complete_task takes the job row lock: one round trip less under it
                outcome = state.complete_task(conn, task.task_id, result, self.queue.settles_in_transaction)
                if outcome["outcome"] in ("duplicate", "missing", "job_finished"):
                    # Another delivery completed the task (or its job ended) while this one ran:
                    # its effects (rows loaded in this transaction) must not commit a second time.
                    conn.rollback()
                    state.cancel_orphan_task(conn, task.task_id)
                    settle(conn)  # the rollback took the first one back
                if outcome["outcome"] == "stage_completed":
                    self._after_stage_sql(conn, outcome, after)
            result_name = str(outcome["outcome"])
        except Exception as exc:  # noqa: BLE001 - any handler error is the task's failure, classified below
            result_name = self._task_failed(task, exc, settle, after)
        self._after_commit(after)
        return result_name

    def _task_failed(self, task: TaskRecord, exc: BaseException, settle: Settle, after: AfterCommit) -> str:
        error = f"{type(exc).__name__}: {exc}"
        retry = is_retryable(exc) and task.attempts <= self.settings.task_max_retries
        with database.connection() as conn:
            job = state.get_job(conn, task.parent_job_id, lock=True)
            if job is None or job.status not in state.ACTIVE_JOB:
                state.cancel_orphan_task(conn, task.task_id, f"stopped: the job is {job.status.value}" if job else None)
                settle(conn)
                if job is not None and job.status == "cancelled":
                    after.cleanups.append((job, True))  # now that this task stopped, its staging can go
                return "job_finished"
            if retry:
                delay = self.settings.task_retry_backoff_seconds * 2 ** (task.attempts - 1)
                log.warning(
                    "task %s attempt %s failed (%s); retrying in %.1fs", task.task_id, task.attempts, error, delay
                )
                state.set_task_retrying(conn, task.task_id, error)
                self.queue.send(
                    conn,
                    self.settings.tasks_queue,
                    [self._task_message(job, task.stage, task.task_id, task.task_type, task.attempts + 1, delay)],
                )
                settle(conn)
                return "retrying"
            log.error("task %s failed for good: %s", task.task_id, error)
            details = {
                "error": error,
                "task_id": task.task_id,
                "task_type": task.task_type,
                "stage": task.stage,
                "stage_name": self.jobs[job.job_type].stage(task.stage).name if job.job_type in self.jobs else None,
                "attempts": task.attempts,
                "retryable": is_retryable(exc),
                "traceback_tail": traceback.format_exception(exc)[-1].strip()[:500],
            }
            self.fail_job(conn, task, job.job_id, details)
            settle(conn)
            after.cleanups.append((job, True))
        return "failed"

    def fail_job(
        self, conn: psycopg.Connection, task: TaskRecord | None, job_id: str, details: dict[str, Any]
    ) -> bool:
        """Fail the job (and task), cancel what has not started and drop its waiting task messages."""
        if not state.fail_task_and_job(conn, task, job_id, details):
            return False
        self.queue.discard_pending(conn, self.settings.tasks_queue, job_id)
        return True

    def cancel_job(self, job_id: str, reason: str = "cancelled by request") -> dict[str, Any] | None:
        """Cancel an active job: waiting tasks and their messages are dropped at once, running ones stop at
        their next checkpoint. Cleaned up now when nothing runs, else by the task that stops (or the janitor).
        None when the job is not active."""
        with database.connection() as conn:
            outcome = state.cancel_job(conn, job_id, reason)
            if outcome is None:
                return None
            outcome["messages_dropped"] = self.queue.discard_pending(conn, self.settings.tasks_queue, job_id)
            job = state.get_job(conn, job_id)
        self.queue.after_commit()
        if job is not None and outcome["tasks_stopping"] == 0:
            self.cleanup_job(job, failed=True)
        return outcome

    def fail_poison_message(self, body: dict[str, Any], delivery_count: int, settle: Settle = _no_settle) -> str:
        """The queue's last allowed delivery of a message whose handling never finished (its worker keeps
        dying): fail its task and job now, instead of letting the queue dead-letter it and the job wait
        for the janitor. A stale copy (its task or stage already done, or an earlier run's) changes nothing."""
        after = AfterCommit()
        task_id = body.get("task_id")
        job_id = body.get("parent_job_id") or body.get("job_id")
        reason = (
            f"the {'task' if task_id else 'stage'} message was delivered {delivery_count} times, the most the "
            "queue allows (QUEUE_MAX_DELIVERY_COUNT), and its handling never finished: the worker handling it "
            "probably crashed or was stopped each time (out of memory, killed, timed out); "
            "fix the cause and submit the job again"
        )
        details = {
            "error": reason,
            "task_id": task_id,
            "task_type": body.get("task_type"),
            "stage": body.get("stage"),
            "delivery_count": delivery_count,
            "phase": "running the task" if task_id else "creating the stage's tasks",
        }
        outcome = "poison_ignored"
        with database.connection() as conn:
            job = state.get_job(conn, job_id, lock=True) if job_id else None
            task = None
            if task_id:
                row = conn.execute("SELECT * FROM app.tasks WHERE task_id = %s", [task_id]).fetchone()
                task = TaskRecord.model_validate(row) if row else None
            current = job is not None and job.run == body.get("run", 1) and (
                task.status in ("queued", "retrying", "processing") if task is not None
                else not task_id and job.stage == body.get("stage")
                and not state.stage_has_tasks(conn, job.job_id, job.stage)
            )
            if current and job is not None and self.fail_job(conn, task, job.job_id, details):
                after.cleanups.append((job, True))
                outcome = "poisoned"
            settle(conn)
        self._after_commit(after)
        return outcome

    # ------------------------------------------------------------------ stage completion
    def _after_stage_sql(self, conn: psycopg.Connection, outcome: dict[str, Any], after: AfterCommit) -> None:
        """complete_task already advanced the stage in SQL: enqueue the next one, or finish the job."""
        if outcome["next_stage"] is not None:
            job = JobRecord(
                job_id=outcome["job_id"],
                job_type=outcome["job_type"],
                parameters={},
                total_stages=outcome["total_stages"],
                run=outcome["run"],
            )
            self.send_job_message(conn, job, outcome["next_stage"])
        else:
            self._finish_job(conn, outcome["job_id"], outcome["stage"], after)

    def _stage_completed(self, conn: psycopg.Connection, job_id: str, stage: int, after: AfterCommit) -> None:
        """A stage with no tasks: advance or finish without waiting for anything."""
        job = state.get_job(conn, job_id, lock=True)
        assert job is not None
        if stage < job.total_stages:
            next_stage = state.advance_stage(conn, job_id, stage)
            self.send_job_message(conn, job, next_stage)
        else:
            self._finish_job(conn, job_id, stage, after)

    def _finish_job(self, conn: psycopg.Connection, job_id: str, stage: int, after: AfterCommit) -> None:
        job = state.get_job(conn, job_id, lock=True)
        assert job is not None
        job_cls = self.jobs[job.job_type]
        context = JobExecutionContext(
            job_id=job.job_id,
            job_type=job.job_type,
            current_stage=stage,
            total_stages=job.total_stages,
            parameters=job.parameters,
            task_results=state.task_results(conn, job_id),
            stage_timings=job.stage_timings,
            created_at=job.created_at,
        )
        result = job_cls.finalize_job(context)
        state.complete_job(conn, job_id, stage, result)
        after.cleanups.append((job, False))

    # ------------------------------------------------------------------ after commit
    def _after_commit(self, after: AfterCommit) -> None:
        self.queue.after_commit()
        for job, failed in after.cleanups:
            self.cleanup_job(job, failed)

    def cleanup_job(self, job: JobRecord, failed: bool) -> None:
        """Run the job's cleanup; on success record it so that the janitor does not repeat it."""
        job_cls = self.jobs.get(job.job_type)
        if job_cls is None:
            return
        try:
            job_cls.cleanup(job, failed)
        except Exception:
            log.exception("cleanup of job %s failed; the janitor will try again", job.job_id)
            return
        with database.connection() as conn:
            state.mark_cleaned(conn, job.job_id, job.run)
