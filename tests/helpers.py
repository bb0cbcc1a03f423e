"""Helpers the tests share."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def job_status(job_id: str) -> str | None:
    from core import state
    from infrastructure import database as dbm

    with dbm.connection() as conn:
        job = state.get_job(conn, job_id)
    return job.status.value if job else None


def wait_for_job(job_id: str, timeout: float = 300.0) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = job_status(job_id)
        if status in ("completed", "failed", "cancelled"):
            return status
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not finish within {timeout}s (status {job_status(job_id)})")


def submit(job_type: str, params: dict[str, Any]) -> str:
    from core.submit import submit_job

    return submit_job(job_type, params).job_id


DUPLICATOR = """
    CREATE OR REPLACE FUNCTION app.test_duplicate() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF NEW.message_id NOT LIKE '%%#dup' THEN
            INSERT INTO app.queue_messages (queue, message_id, body)
            VALUES (NEW.queue, NEW.message_id || '#dup', NEW.body);
        END IF;
        RETURN NULL;
    END $$;
    CREATE OR REPLACE TRIGGER test_duplicate AFTER INSERT ON app.queue_messages
        FOR EACH ROW EXECUTE FUNCTION app.test_duplicate();
"""


@contextmanager
def every_message_twice(db: Any) -> Iterator[None]:
    """While inside, every message sent is also sent again under another id (as a lost
    duplicate-detection window would let through)."""
    db.execute(DUPLICATOR)
    try:
        yield
    finally:
        db.execute("DROP TRIGGER IF EXISTS test_duplicate ON app.queue_messages")


def receive_own(worker: Any, job_id: str, timeout: float = 30.0) -> Any:
    """The next queued message of job `job_id` (job or task message): messages of other tests' jobs are
    held while looking and given back after, so a test never depends on what others left queued."""
    held = []
    deadline = time.time() + timeout
    try:
        while time.time() < deadline:
            msg = worker.receive_one()
            if msg is None:
                time.sleep(0.05)
                continue
            if job_id in (msg.body.get("job_id"), msg.body.get("parent_job_id")):
                return msg
            held.append(msg)
        raise AssertionError(f"no message of job {job_id} within {timeout}s")
    finally:
        for msg in held:
            worker.queue.release(msg)
