"""Queue in a PostgreSQL table: SKIP LOCKED dequeue, visibility timeout as the lock, LISTEN/NOTIFY wake-ups.

Because messages are rows in the application database, sending them in the transaction that
changes job state makes the outbox and the queue one and the same.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Sequence
from typing import Any

import psycopg

from config import get_settings
from infrastructure import database
from infrastructure.queues.base import (
    DeadLetter,
    DeadLetterPage,
    MessageQueue,
    OutgoingMessage,
    QueueStats,
    ReceivedMessage,
)

log = logging.getLogger(__name__)
CHANNEL = "geoetl_queue"

# A message whose last allowed delivery ended without completion (lock expired, abandoned) is
# dead-lettered instead of delivered again, as Service Bus does past MaxDeliveryCount.
_RECEIVE = """
WITH next AS (
    SELECT id, delivery_count >= %(max)s AS exhausted FROM app.queue_messages
     WHERE queue = %(queue)s AND visible_at <= clock_timestamp() AND dead_lettered_at IS NULL
     ORDER BY visible_at, id
     LIMIT %(n)s
     FOR UPDATE SKIP LOCKED
)
UPDATE app.queue_messages m
   SET visible_at = CASE WHEN next.exhausted THEN m.visible_at
                         ELSE clock_timestamp() + make_interval(secs => %(lock)s) END,
       delivery_count = m.delivery_count + CASE WHEN next.exhausted THEN 0 ELSE 1 END,
       lock_token = CASE WHEN next.exhausted THEN NULL ELSE gen_random_uuid() END,
       dead_lettered_at = CASE WHEN next.exhausted THEN now() END,
       dead_letter_reason = CASE WHEN next.exhausted THEN %(reason)s END
  FROM next
 WHERE m.id = next.id
RETURNING m.id, m.message_id, m.body, m.delivery_count, m.lock_token, next.exhausted
"""
MAX_DELIVERY_REASON = "MaxDeliveryCountExceeded"


# Served by queue_parent_job_idx (migration 005).
DISCARD_SQL = (
    "DELETE FROM app.queue_messages WHERE queue = %s AND body ->> 'parent_job_id' = %s"
    " AND dead_lettered_at IS NULL AND (lock_token IS NULL OR visible_at <= clock_timestamp())"
)


class PostgresQueue(MessageQueue):
    backend = "postgres"
    settles_in_transaction = True

    def __init__(self, lock_seconds: float | None = None, max_delivery_count: int | None = None) -> None:
        self.lock_seconds = float(lock_seconds or get_settings().queue_lock_seconds)
        self.max_delivery_count = int(max_delivery_count or get_settings().queue_max_delivery_count)
        self._wake = threading.Event()
        self._listener: threading.Thread | None = None
        self._stop = threading.Event()

    # --- sending
    def send(self, conn: psycopg.Connection, queue: str, messages: Sequence[OutgoingMessage]) -> None:
        if not messages:
            return
        conn.execute(
            "INSERT INTO app.queue_messages (queue, message_id, body, visible_at)"
            " SELECT %s, m, b::jsonb, clock_timestamp() + make_interval(secs => d)"
            "   FROM unnest(%s::text[], %s::text[], %s::float8[]) AS u(m, b, d)"
            " ON CONFLICT (queue, message_id) DO NOTHING",
            [
                queue,
                [m.message_id for m in messages],
                [json.dumps(m.body) for m in messages],
                [m.delay_seconds for m in messages],
            ],
        )

    def discard_pending(self, conn: psycopg.Connection, queue: str, job_id: str) -> int:
        cur = conn.execute(DISCARD_SQL, [queue, job_id])
        return cur.rowcount

    # --- receiving and settling
    def receive(self, queue: str, max_messages: int = 1, lock_seconds: float | None = None) -> list[ReceivedMessage]:
        params = {"queue": queue, "n": max_messages, "lock": lock_seconds or self.lock_seconds,
                  "max": self.max_delivery_count, "reason": MAX_DELIVERY_REASON}
        while True:
            with database.connection() as conn:
                rows = conn.execute(_RECEIVE, params).fetchall()
            for r in rows:
                if r["exhausted"]:
                    log.warning("message %s dead-lettered after %s deliveries", r["message_id"], r["delivery_count"])
            delivered = [r for r in rows if not r["exhausted"]]
            if delivered or not rows:
                break  # a batch of only dead-lettered messages: look again
        return [
            ReceivedMessage(
                queue=queue,
                message_id=r["message_id"],
                body=r["body"],
                delivery_count=r["delivery_count"],
                lock_token=str(r["lock_token"]),
                handle=r["id"],
            )
            for r in delivered
        ]

    def complete(self, msg: ReceivedMessage, conn: psycopg.Connection | None = None) -> None:
        stmt = "DELETE FROM app.queue_messages WHERE id = %s AND lock_token = %s"
        if conn is not None:
            conn.execute(stmt, [msg.handle, msg.lock_token])
            return
        with database.connection() as c:
            c.execute(stmt, [msg.handle, msg.lock_token])

    def abandon(self, msg: ReceivedMessage, delay_seconds: float = 0.0) -> None:
        with database.connection() as c:
            c.execute(
                "UPDATE app.queue_messages SET lock_token = NULL,"
                " visible_at = clock_timestamp() + make_interval(secs => %s)"
                " WHERE id = %s AND lock_token = %s",
                [delay_seconds, msg.handle, msg.lock_token],
            )

    def release(self, msg: ReceivedMessage) -> None:
        """Unlike abandon, a message given back unopened does not count towards dead-lettering."""
        with database.connection() as c:
            c.execute(
                "UPDATE app.queue_messages SET lock_token = NULL, visible_at = clock_timestamp(),"
                " delivery_count = greatest(delivery_count - 1, 0) WHERE id = %s AND lock_token = %s",
                [msg.handle, msg.lock_token],
            )

    def dead_letter(self, msg: ReceivedMessage, reason: str) -> None:
        with database.connection() as c:
            c.execute(
                "UPDATE app.queue_messages SET dead_lettered_at = now(), dead_letter_reason = %s, lock_token = NULL"
                " WHERE id = %s",
                [reason[:2000], msg.handle],
            )

    def renew_lock(self, msg: ReceivedMessage) -> bool:
        with database.connection() as c:
            row = c.execute(
                "UPDATE app.queue_messages SET visible_at = clock_timestamp() + make_interval(secs => %s)"
                " WHERE id = %s AND lock_token = %s RETURNING id",
                [self.lock_seconds, msg.handle, msg.lock_token],
            ).fetchone()
        return row is not None

    # --- waking idle consumers
    def _listen(self) -> None:
        while not self._stop.is_set():
            try:
                with database.connect(autocommit=True) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self._wake.set()  # messages may have arrived while we were not listening
                    while not self._stop.is_set():
                        for _ in conn.notifies(timeout=1.0):
                            self._wake.set()
            except psycopg.Error as exc:
                log.warning("queue listener lost its connection (%s); reconnecting", type(exc).__name__)
                self._stop.wait(1.0)

    def wait(self, timeout: float) -> None:
        if self._listener is None:
            self._listener = threading.Thread(target=self._listen, name="queue-listener", daemon=True)
            self._listener.start()
        if self._wake.wait(timeout):
            self._wake.clear()

    def health(self) -> dict[str, Any]:
        with database.connection() as c:
            rows = c.execute(
                "SELECT queue, count(*) FILTER (WHERE dead_lettered_at IS NULL) AS active,"
                " count(*) FILTER (WHERE dead_lettered_at IS NOT NULL) AS dead_lettered"
                " FROM app.queue_messages GROUP BY queue"
            ).fetchall()
        s = get_settings()
        depth = {r["queue"]: {"active": r["active"], "dead_lettered": r["dead_lettered"]} for r in rows}
        return {
            "backend": self.backend,
            "queues": {q: depth.get(q, {"active": 0, "dead_lettered": 0}) for q in (s.jobs_queue, s.tasks_queue)},
        }

    def close(self) -> None:
        self._stop.set()

    # --- operations: statistics and dead letters (each query walks an index of migration 005)
    def queue_stats(self, queues: Sequence[str]) -> dict[str, QueueStats]:
        with database.connection() as c:
            return {q: _stats(c, q) for q in queues}

    def dead_letters(self, queue: str, limit: int, after: str | None = None) -> DeadLetterPage:
        with database.connection() as c:
            rows = c.execute(DEAD_LETTERS_SQL, {"queue": queue, "after": int(after or 0), "limit": limit}).fetchall()
            total = c.execute(DEAD_LETTER_COUNT_SQL, {"queue": queue}).fetchone()
        messages = [
            DeadLetter(
                message_id=r["message_id"],
                body=r["body"],
                reason=r["dead_letter_reason"],
                dead_lettered_at=r["dead_lettered_at"].isoformat(),
                enqueued_at=r["enqueued_at"].isoformat(),
                delivery_count=r["delivery_count"],
                cursor=str(r["id"]),
            )
            for r in rows
        ]
        next_cursor = messages[-1].cursor if len(messages) == limit else None
        return DeadLetterPage(messages, int(total["n"]) if total else 0, next_cursor)

    def replay_dead_letters(self, queue: str, message_ids: Sequence[str] | None, limit: int) -> list[str]:
        """Back in the queue as new: visible now, unlocked, its delivery count reset."""
        with database.connection() as c:
            rows = c.execute(
                REPLAY_SQL, {"queue": queue, "ids": list(message_ids) if message_ids is not None else None,
                             "limit": limit},
            ).fetchall()
        return [r["message_id"] for r in rows]


STATS_SQL = """
SELECT (SELECT count(*) FROM app.queue_messages
         WHERE queue = %(queue)s AND dead_lettered_at IS NULL) AS depth,
       (SELECT count(*) FROM app.queue_messages
         WHERE queue = %(queue)s AND dead_lettered_at IS NULL AND visible_at > now()
           AND lock_token IS NULL) AS scheduled,
       (SELECT extract(epoch FROM clock_timestamp() - min(enqueued_at)) FROM app.queue_messages
         WHERE queue = %(queue)s AND dead_lettered_at IS NULL) AS oldest_age,
       (SELECT count(*) FROM app.queue_messages
         WHERE queue = %(queue)s AND dead_lettered_at IS NOT NULL) AS dead_letters
"""
DEAD_LETTERS_SQL = (
    "SELECT id, message_id, body, dead_letter_reason, dead_lettered_at, enqueued_at, delivery_count"
    " FROM app.queue_messages WHERE queue = %(queue)s AND dead_lettered_at IS NOT NULL AND id > %(after)s"
    " ORDER BY id LIMIT %(limit)s"
)
DEAD_LETTER_COUNT_SQL = (
    "SELECT count(*) AS n FROM app.queue_messages WHERE queue = %(queue)s AND dead_lettered_at IS NOT NULL"
)
REPLAY_SQL = """
UPDATE app.queue_messages m
   SET dead_lettered_at = NULL, dead_letter_reason = NULL, lock_token = NULL, delivery_count = 0,
       visible_at = clock_timestamp()
 WHERE m.id IN (SELECT id FROM app.queue_messages
                 WHERE queue = %(queue)s AND dead_lettered_at IS NOT NULL
                   AND (%(ids)s::text[] IS NULL OR message_id = ANY(%(ids)s))
                 ORDER BY id LIMIT %(limit)s FOR UPDATE SKIP LOCKED)
RETURNING m.message_id
"""


def _stats(conn: psycopg.Connection, queue: str) -> QueueStats:
    row = conn.execute(STATS_SQL, {"queue": queue}).fetchone()
    assert row is not None
    age = row["oldest_age"]
    return QueueStats(
        depth=int(row["depth"]),
        oldest_age_seconds=max(0.0, float(age)) if age is not None else None,
        dead_letters=int(row["dead_letters"]),
        scheduled=int(row["scheduled"]),
    )
