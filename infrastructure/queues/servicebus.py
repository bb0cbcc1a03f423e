"""Azure Service Bus backend, fed from the app.outbox table.

State changes record their messages in app.outbox inside their own transaction; `after_commit`
(and the janitor, for anything a crash left behind) relays unsent rows to Service Bus with their
message id, so Service Bus duplicate detection and idempotent handlers absorb re-sends. A row
whose time lies ahead (a retry's backoff) is relayed as a scheduled message.

Receiving: one long-lived receiver per queue, each owned by one thread (the SDK's clients are
not thread-safe), which long-polls only while a consumer asks for messages and performs the
settlements and lock renewals of the messages it received. Both queues are polled at once, so an
idle jobs queue never delays the tasks queue. Service Bus cannot delay an abandoned message:
`abandon(msg, delay)` schedules a copy at the backoff time and completes the original, the copy
carrying the deliveries so far so that poison detection still counts them.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from config import get_settings
from infrastructure import database
from infrastructure.queues.base import MessageQueue, OutgoingMessage, ReceivedMessage
from infrastructure.queues.servicebus_operations import ServiceBusOperations

log = logging.getLogger(__name__)
# Application property of a redelivery copy: the deliveries of the messages it replaces.
PRIOR_DELIVERIES = "geoetl-prior-deliveries"
POLL_SECONDS = 1.0  # longest a receive call waits on the service before looking at settlements again


def to_service_bus_message(
    message_id: str, body: dict[str, Any], scheduled_for: datetime | None = None, prior_deliveries: int = 0
) -> Any:
    """The SDK message for one outbox row (or one redelivery copy)."""
    from azure.servicebus import ServiceBusMessage

    props = {PRIOR_DELIVERIES: prior_deliveries} if prior_deliveries else None
    msg = ServiceBusMessage(
        json.dumps(body), message_id=message_id, content_type="application/json", application_properties=props
    )
    if scheduled_for is not None and scheduled_for > datetime.now(UTC):
        msg.scheduled_enqueue_time_utc = scheduled_for
    return msg


def prior_deliveries(application_properties: dict[Any, Any] | None) -> int:
    """Deliveries of the messages a redelivery copy replaces (keys may come back as bytes)."""
    props = application_properties or {}
    value = props.get(PRIOR_DELIVERIES, props.get(PRIOR_DELIVERIES.encode()))
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def copy_id(message_id: str, deliveries: int) -> str:
    """Message id of a redelivery copy: new (duplicate detection would drop the original's id),
    and the same if the copy is scheduled twice for the same deliveries."""
    base = message_id.split("~d", 1)[0]
    return f"{base}~d{deliveries}"


def body_of(sdk_message: Any) -> dict[str, Any]:
    body = sdk_message.body
    raw = body if isinstance(body, bytes | str) else b"".join(body)
    return json.loads(raw)


class _QueueReceiver:
    """One queue's receiver and the thread that alone uses it."""

    def __init__(self, client: Any, queue: str, wake: threading.Event, poll_seconds: float) -> None:
        self.client, self.queue, self.wake, self.poll_seconds = client, queue, wake, poll_seconds
        self.cond = threading.Condition()
        self.buffer: deque[Any] = deque()
        self.ops: deque[tuple[Callable[[Any], Any], Future[Any]]] = deque()
        self.wanted = 0
        self.stopping = False
        self.closed = False  # no operation runs any more
        self.thread = threading.Thread(target=self._run, name=f"sb-receiver-{queue}", daemon=True)
        self.thread.start()

    def take(self, n: int) -> list[Any]:
        """Up to n received messages at once; asks the service for what is missing."""
        with self.cond:
            got = [self.buffer.popleft() for _ in range(min(n, len(self.buffer)))]
            if len(got) < n:
                self.wanted = max(self.wanted, n - len(got))
                self.cond.notify_all()
        return got

    def give_back(self, sdk_message: Any) -> None:
        """A message received but not started goes back to this process's consumers (no delivery counted)."""
        with self.cond:
            self.buffer.appendleft(sdk_message)
        self.wake.set()

    def call(self, fn: Callable[[Any], Any]) -> Any:
        """Run fn(receiver) on the receiver's thread and return its result (or raise its error)."""
        fut: Future[Any] = Future()
        with self.cond:
            if self.closed or not self.thread.is_alive():
                raise RuntimeError(f"the receiver of {self.queue} is closed")
            self.ops.append((fn, fut))
            self.cond.notify_all()
        return fut.result(timeout=120)

    def _run_ops(self, receiver: Any) -> None:
        while True:
            with self.cond:
                if not self.ops:
                    return
                fn, fut = self.ops.popleft()
            try:
                fut.set_result(fn(receiver))
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                fut.set_exception(exc)

    def _run(self) -> None:
        try:
            receiver = self.client.get_queue_receiver(queue_name=self.queue)
        except Exception:
            log.exception("could not open a receiver on %s", self.queue)
            with self.cond:
                self.closed = True
            return
        try:
            while True:
                self._run_ops(receiver)
                with self.cond:
                    if self.stopping:
                        break
                    want = self.wanted
                    if not want and not self.ops:
                        self.cond.wait(self.poll_seconds)
                        continue
                if not want:
                    continue
                try:
                    msgs = receiver.receive_messages(max_message_count=want, max_wait_time=self.poll_seconds)
                except Exception:
                    log.exception("receiving from %s failed; trying again", self.queue)
                    with self.cond:
                        self.cond.wait(self.poll_seconds)
                    continue
                if msgs:
                    with self.cond:
                        self.buffer.extend(msgs)
                        self.wanted = max(0, self.wanted - len(msgs))
                    self.wake.set()
            # closing: what no consumer took goes back to the queue at once instead of waiting for its lock
            self._run_ops(receiver)
            for m in list(self.buffer):
                try:
                    receiver.abandon_message(m)
                except Exception:  # noqa: BLE001 - its lock will expire
                    log.warning("could not give back message %s", getattr(m, "message_id", "?"))
            self.buffer.clear()
        finally:
            with self.cond:
                self.closed = True
                pending, self.ops = list(self.ops), deque()
            for _, fut in pending:
                fut.set_exception(RuntimeError(f"the receiver of {self.queue} was closed"))
            receiver.close()

    def close(self, timeout: float = 10.0) -> None:
        with self.cond:
            self.stopping = True
            self.cond.notify_all()
        self.thread.join(timeout)


class ServiceBusQueue(ServiceBusOperations, MessageQueue):
    backend = "servicebus"

    def __init__(self, client: Any | None = None, poll_seconds: float = POLL_SECONDS) -> None:
        self._client = client
        self.settings = get_settings()
        self.poll_seconds = poll_seconds
        self._receivers: dict[str, _QueueReceiver] = {}
        self._senders: dict[str, tuple[Any, threading.Lock]] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()

    @property
    def client(self) -> Any:
        if self._client is None:
            from azure.servicebus import ServiceBusClient

            conn_str = self.settings.service_bus_connection_string.get_secret_value()
            if conn_str:
                self._client = ServiceBusClient.from_connection_string(conn_str)
            elif self.settings.service_bus_namespace:
                from azure.identity import DefaultAzureCredential  # type: ignore[import-not-found]

                self._client = ServiceBusClient(self.settings.service_bus_namespace, DefaultAzureCredential())
            else:
                raise RuntimeError("QUEUE_BACKEND=servicebus needs SERVICE_BUS_CONNECTION_STRING or _NAMESPACE")
        return self._client

    # --- sending
    def send(self, conn: psycopg.Connection, queue: str, messages: Sequence[OutgoingMessage]) -> None:
        if not messages:
            return
        conn.execute(
            "INSERT INTO app.outbox (queue, message_id, body, scheduled_for)"
            " SELECT %s, m, b::jsonb, now() + make_interval(secs => d)"
            "   FROM unnest(%s::text[], %s::text[], %s::float8[]) AS u(m, b, d)",
            [
                queue,
                [m.message_id for m in messages],
                [json.dumps(m.body) for m in messages],
                [m.delay_seconds for m in messages],
            ],
        )

    def _send(self, queue: str, fn: Callable[[Any], Any]) -> Any:
        """Run fn(sender) on the queue's long-lived sender, one caller at a time."""
        with self._lock:
            if queue not in self._senders:
                self._senders[queue] = (self.client.get_queue_sender(queue_name=queue), threading.Lock())
            sender, lock = self._senders[queue]
        with lock:
            return fn(sender)

    def after_commit(self) -> None:
        self.relay()

    def relay(self, stale_after_seconds: float = 0.0, batch: int = 100) -> int:
        """Send unsent outbox rows older than stale_after_seconds; returns how many were sent.

        Rows are marked sent in the transaction that locked them, after the send returned: a crash
        in between leaves them unsent and they are sent again (duplicate detection drops the copy).
        """
        sent = 0
        while True:
            with database.connection() as conn:
                rows = conn.execute(
                    "SELECT id, queue, message_id, body, scheduled_for FROM app.outbox"
                    " WHERE sent_at IS NULL AND created_at <= now() - make_interval(secs => %s)"
                    " ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED",
                    [stale_after_seconds, batch],
                ).fetchall()
                if not rows:
                    return sent
                by_queue: dict[str, list[Any]] = {}
                for r in rows:
                    by_queue.setdefault(r["queue"], []).append(
                        to_service_bus_message(r["message_id"], r["body"], r["scheduled_for"])
                    )
                for queue, msgs in by_queue.items():
                    self._send(queue, lambda sender, msgs=msgs: sender.send_messages(msgs))
                conn.execute(
                    "UPDATE app.outbox SET sent_at = now(), attempts = attempts + 1 WHERE id = ANY(%s)",
                    [[r["id"] for r in rows]],
                )
                sent += len(rows)

    def redeliver_later(self, queue: str, message_id: str, body: dict[str, Any], deliveries: int,
                        delay_seconds: float) -> None:
        """Schedule a copy of a message at now + delay; the caller then completes the original."""
        copy = to_service_bus_message(copy_id(message_id, deliveries), body, prior_deliveries=deliveries)
        at = datetime.now(UTC) + timedelta(seconds=delay_seconds)
        self._send(queue, lambda sender: sender.schedule_messages(copy, at))

    # --- receiving and settling
    def _receiver(self, queue: str) -> _QueueReceiver:
        with self._lock:
            if queue not in self._receivers or self._receivers[queue].closed:
                self._receivers[queue] = _QueueReceiver(self.client, queue, self._wake, self.poll_seconds)
            return self._receivers[queue]

    def receive(self, queue: str, max_messages: int = 1, lock_seconds: float | None = None) -> list[ReceivedMessage]:
        """What this queue's receiver holds, without waiting (the lock duration is the queue's own)."""
        receiver = self._receiver(queue)
        return [
            ReceivedMessage(
                queue=queue,
                message_id=str(m.message_id),
                body=body_of(m),
                delivery_count=(m.delivery_count or 1) + prior_deliveries(m.application_properties),
                lock_token=str(m.lock_token),
                handle=(receiver, m),
            )
            for m in receiver.take(max_messages)
        ]

    def wait(self, timeout: float) -> None:
        if self._wake.wait(timeout):
            self._wake.clear()

    def _settle(self, msg: ReceivedMessage, op: str, fn: Callable[[Any, Any], Any]) -> bool:
        """Settle through the receiver that received the message; False when its lock was lost
        (the message comes back to some consumer and is handled again, harmlessly)."""
        from azure.servicebus.exceptions import MessageAlreadySettled, MessageLockLostError

        receiver, m = msg.handle
        try:
            receiver.call(lambda r: fn(r, m))
            return True
        except (MessageLockLostError, MessageAlreadySettled) as exc:
            log.warning("could not %s message %s: %s", op, msg.message_id, type(exc).__name__)
            return False

    def complete(self, msg: ReceivedMessage, conn: psycopg.Connection | None = None) -> None:
        self._settle(msg, "complete", lambda r, m: r.complete_message(m))

    def abandon(self, msg: ReceivedMessage, delay_seconds: float = 0.0) -> None:
        """Without delay the service redelivers at once; with one, a scheduled copy replaces the message."""
        if delay_seconds <= 0:
            self._settle(msg, "abandon", lambda r, m: r.abandon_message(m))
            return
        self.redeliver_later(msg.queue, msg.message_id, msg.body, msg.delivery_count, delay_seconds)
        self.complete(msg)

    def release(self, msg: ReceivedMessage) -> None:
        receiver, m = msg.handle
        receiver.give_back(m)

    def dead_letter(self, msg: ReceivedMessage, reason: str) -> None:
        self._settle(msg, "dead-letter",
                     lambda r, m: r.dead_letter_message(m, reason=reason[:200], error_description=reason[:1000]))

    def renew_lock(self, msg: ReceivedMessage) -> bool:
        try:
            return self._settle(msg, "renew the lock of", lambda r, m: r.renew_message_lock(m))
        except Exception:  # noqa: BLE001 - any other SDK failure also means the lock may be gone
            log.warning("lost the lock of message %s", msg.message_id)
            return False

    def health(self) -> dict[str, Any]:
        with database.connection() as c:
            row = c.execute(
                "SELECT count(*) AS unsent, min(created_at) AS oldest FROM app.outbox WHERE sent_at IS NULL"
            ).fetchone()
        oldest = row["oldest"] if row else None
        stale = bool(oldest and oldest < datetime.now(UTC) - timedelta(minutes=5))
        return {"backend": self.backend, "outbox_unsent": row["unsent"] if row else 0, "outbox_stale": stale}

    def close(self) -> None:
        """Stop the receivers (unstarted messages go back to the queue), then close senders and client."""
        with self._lock:
            receivers, self._receivers = list(self._receivers.values()), {}
            senders, self._senders = list(self._senders.values()), {}
        for r in receivers:
            r.close()
        for sender, _ in senders:
            try:
                sender.close()
            except Exception:  # noqa: BLE001 - closing is best effort
                log.warning("closing a Service Bus sender failed")
        if self._client is not None:
            self._client.close()
