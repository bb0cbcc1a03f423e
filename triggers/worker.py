"""`geoetl worker`: consumes the jobs and tasks queues with N threads until SIGTERM.

Messages are settled in the transaction of their effects; a lock-renewal thread keeps long
tasks' messages locked (and their tasks' heartbeats fresh); the janitor runs in one worker at
a time. On SIGTERM the worker stops receiving, lets running tasks finish (up to a grace
period) and gives back what it could not finish.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from typing import Any

from pydantic import ValidationError

from config import get_settings
from core.janitor import Janitor
from core.machine import CoreMachine
from core.models import JobQueueMessage, TaskQueueMessage
from infrastructure import database, telemetry
from infrastructure.queues import MessageQueue, ReceivedMessage, get_queue
from infrastructure.queues.base import redelivery_delay
from services.context import must_wait, slot_busy, stop_task

log = logging.getLogger("geoetl.worker")
PREFETCH_BUDGET = 0.2  # seconds of expected work a consumer takes per receive


class Worker:
    def __init__(
        self, concurrency: int | None = None, machine: CoreMachine | None = None, queue: MessageQueue | None = None
    ) -> None:
        self.settings = get_settings()
        self.concurrency = max(1, concurrency or self.settings.worker_concurrency)
        database.reserve_capacity(self.concurrency * 2 + 3)  # handler + settle, renewal, janitor, receive
        self.queue: MessageQueue = queue or (machine.queue if machine else get_queue())
        self.machine = machine or CoreMachine(queue=self.queue)
        self.stopping = threading.Event()
        self._inflight: dict[int, ReceivedMessage] = {}
        self._inflight_lock = threading.Lock()
        self.handled = 0

    # --- one message
    def handle(self, msg: ReceivedMessage) -> str:
        """Process one received message and settle it; never raises."""
        key = id(msg)
        with self._inflight_lock:
            self._inflight[key] = msg
        settled = False

        def settle(conn: Any) -> None:
            """Delete the message in the transaction of its effects where the queue lives in the
            database; elsewhere (Service Bus) it is acknowledged below, once that transaction has
            committed: acknowledged first, a failed commit would lose the message and its effects."""
            nonlocal settled
            if self.queue.settles_in_transaction:
                self.queue.complete(msg, conn)
                settled = True

        try:
            if msg.delivery_count >= self.settings.queue_max_delivery_count:
                # the queue's last allowed delivery: fail the job (not the queue's dead-letter, which no job sees)
                outcome = self.machine.fail_poison_message(msg.body, msg.delivery_count, settle)
                if not settled:
                    self.queue.complete(msg)
                return outcome
            if msg.queue == self.settings.jobs_queue:
                outcome = self.machine.process_job_message(JobQueueMessage.model_validate(msg.body), settle)
            else:
                outcome = self.machine.process_task_message(TaskQueueMessage.model_validate(msg.body), settle)
            if not settled:
                self.queue.complete(msg)
            return outcome
        except ValidationError as exc:
            log.error("malformed message %s dead-lettered: %s", msg.message_id, exc)
            self.queue.dead_letter(msg, f"malformed message: {exc}")
            return "malformed"
        except Exception:
            log.exception("message %s failed; it will be redelivered", msg.message_id)
            delay = redelivery_delay(msg.delivery_count)
            try:
                self.queue.abandon(msg, delay)
            except Exception:
                log.exception("could not abandon %s; its lock will expire", msg.message_id)
            return "abandoned"
        finally:
            with self._inflight_lock:
                self._inflight.pop(key, None)
            self.handled += 1

    def receive_one(self) -> ReceivedMessage | None:
        got = self.receive_batch(1)
        return got[0] if got else None

    def receive_batch(self, n: int) -> list[ReceivedMessage]:
        """Job messages first: a new stage's fan-out should not wait behind thousands of tasks."""
        for queue in (self.settings.jobs_queue, self.settings.tasks_queue):
            got = self.queue.receive(queue, 1 if queue == self.settings.jobs_queue else n)
            if got:
                return got
        return []

    # --- threads
    def _consume(self) -> None:
        """Receive several short tasks per round trip, long ones one at a time.

        The batch size follows the recent task duration: about PREFETCH_BUDGET seconds of work
        per batch. A task that turns out long gives the rest of its batch back at once, so other
        consumers (and other workers) can take them instead of waiting behind it.
        """
        typical = PREFETCH_BUDGET  # seconds per task, smoothed; start cautious (batch of one)
        while not self.stopping.is_set():
            size = max(1, min(self.settings.worker_prefetch, int(PREFETCH_BUDGET / max(typical, 1e-4))))
            try:
                batch = self.receive_batch(size)
            except Exception:
                log.exception("receiving failed; retrying shortly")
                self.stopping.wait(2.0)
                continue
            if not batch:
                self.queue.wait(1.0)
                continue
            with self._inflight_lock:
                self._inflight.update({id(m): m for m in batch})
            for i, msg in enumerate(batch):
                if self.stopping.is_set():
                    self._give_back(batch[i:])
                    break
                if self._busy_for(msg):
                    self._give_back(batch[i:])
                    self._wait_for_slot()
                    break
                started = time.monotonic()
                self.handle(msg)
                took = time.monotonic() - started
                typical = 0.7 * typical + 0.3 * took
                if took > PREFETCH_BUDGET and i + 1 < len(batch):
                    self._give_back(batch[i + 1 :])
                    break

    def _busy_for(self, msg: ReceivedMessage) -> bool:
        if msg.queue != self.settings.tasks_queue:
            return False
        return must_wait(self.machine.handlers.get(str(msg.body.get("task_type"))))

    def _wait_for_slot(self, longest: float = 1.0) -> None:
        """Until this process's one-at-a-time slot frees (or a second passes, to serve other tasks meanwhile)."""
        deadline = time.monotonic() + longest
        while slot_busy() and time.monotonic() < deadline and not self.stopping.is_set():
            self.stopping.wait(0.02)

    def _give_back(self, msgs: list[ReceivedMessage]) -> None:
        """Return messages this consumer received but did not start (not counted as a delivery)."""
        for msg in msgs:
            with self._inflight_lock:
                self._inflight.pop(id(msg), None)
            try:
                self.queue.release(msg)
            except Exception:
                log.exception("could not give back %s; its lock will expire", msg.message_id)

    def _renew_locks(self) -> None:
        every = max(1.0, self.settings.queue_lock_seconds / 3)
        while not self.stopping.wait(every) or self._inflight:
            with self._inflight_lock:
                msgs = list(self._inflight.values())
            task_ids = [m.body.get("task_id") for m in msgs if m.body.get("task_id")]
            for m in msgs:
                try:
                    self.queue.renew_lock(m)
                except Exception:
                    log.exception("lock renewal of %s failed", m.message_id)
            if task_ids:
                try:
                    with database.connection() as conn:
                        beats = conn.execute(
                            "UPDATE app.tasks t SET heartbeat_at = now() FROM app.jobs j WHERE t.task_id = ANY(%s)"
                            " AND t.status = 'processing' AND j.job_id = t.parent_job_id RETURNING t.task_id, j.status",
                            [task_ids],
                        ).fetchall()
                    for beat in beats:  # a task of a cancelled (or otherwise ended) job stops now
                        if beat["status"] not in ("queued", "processing"):
                            stop_task(beat["task_id"], beat["status"])
                except Exception:
                    log.exception("heartbeat update failed")
            if self.stopping.is_set() and not self._inflight:
                return

    def _janitor(self) -> None:
        janitor = Janitor(self.machine)
        while not self.stopping.wait(self.settings.janitor_interval_seconds):
            try:
                janitor.run_once()
            except Exception:
                log.exception("janitor run failed")

    def run(self, grace_seconds: float = 60.0) -> None:
        telemetry.configure_from_settings()
        signal.signal(signal.SIGTERM, lambda *_: self.stopping.set())
        signal.signal(signal.SIGINT, lambda *_: self.stopping.set())
        consumers = [
            threading.Thread(target=self._consume, name=f"consumer-{i}", daemon=True) for i in range(self.concurrency)
        ]
        helpers = [
            threading.Thread(target=self._renew_locks, name="lock-renewal", daemon=True),
            threading.Thread(target=self._janitor, name="janitor", daemon=True),
        ]
        for t in consumers + helpers:
            t.start()
        log.info("worker started: %s consumers on %s", self.concurrency, self.queue.backend)
        while not self.stopping.is_set():
            self.stopping.wait(0.5)
        log.info("stopping: waiting up to %.0fs for running tasks", grace_seconds)
        deadline = time.monotonic() + grace_seconds
        for t in consumers:
            t.join(max(0.0, deadline - time.monotonic()))
        with self._inflight_lock:
            leftover = list(self._inflight.values())
        for m in leftover:  # give back what we could not finish
            try:
                self.queue.abandon(m)
            except Exception:
                log.exception("could not give back %s", m.message_id)
        self.queue.close()
        database.close_pool()
        log.info("worker stopped after %s messages", self.handled)
