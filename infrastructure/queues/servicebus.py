"""Azure Service Bus backend, fed from the app.outbox table.

State changes record their messages in app.outbox inside their own transaction; `after_commit`
(and the janitor, for anything a crash left behind) relays unsent rows to Service Bus with their
message id, so Service Bus duplicate detection and idempotent handlers absorb re-sends.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from config import get_settings
from infrastructure import database
from infrastructure.queues.base import MessageQueue, OutgoingMessage, ReceivedMessage
from infrastructure.queues.servicebus_operations import ServiceBusOperations

log = logging.getLogger(__name__)


def to_service_bus_message(message_id: str, body: dict[str, Any], scheduled_for: datetime | None = None) -> Any:
    """The SDK message for one outbox row."""
    from azure.servicebus import ServiceBusMessage

    msg = ServiceBusMessage(json.dumps(body), message_id=message_id, content_type="application/json")
    if scheduled_for is not None and scheduled_for > datetime.now(UTC):
        msg.scheduled_enqueue_time_utc = scheduled_for
    return msg


class ServiceBusQueue(ServiceBusOperations, MessageQueue):
    backend = "servicebus"

    def __init__(self, client: Any | None = None) -> None:
        self._client = client
        self.settings = get_settings()

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

    def after_commit(self) -> None:
        self.relay()

    def relay(self, stale_after_seconds: float = 0.0, batch: int = 100) -> int:
        """Send unsent outbox rows older than stale_after_seconds; returns how many were sent."""
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
                    with self.client.get_queue_sender(queue_name=queue) as sender:
                        sender.send_messages(msgs)
                conn.execute(
                    "UPDATE app.outbox SET sent_at = now(), attempts = attempts + 1 WHERE id = ANY(%s)",
                    [[r["id"] for r in rows]],
                )
                sent += len(rows)

    def receive(self, queue: str, max_messages: int = 1, lock_seconds: float | None = None) -> list[ReceivedMessage]:
        receiver = self.client.get_queue_receiver(queue_name=queue)
        out = []
        for m in receiver.receive_messages(max_message_count=max_messages, max_wait_time=5):
            body = json.loads(b"".join(m.body) if not isinstance(m.body, bytes | str) else m.body)
            out.append(
                ReceivedMessage(
                    queue=queue,
                    message_id=str(m.message_id),
                    body=body,
                    delivery_count=m.delivery_count or 1,
                    lock_token=str(m.lock_token),
                    handle=(receiver, m),
                )
            )
        return out

    def complete(self, msg: ReceivedMessage, conn: psycopg.Connection | None = None) -> None:
        receiver, m = msg.handle
        receiver.complete_message(m)

    def abandon(self, msg: ReceivedMessage, delay_seconds: float = 0.0) -> None:
        receiver, m = msg.handle
        receiver.abandon_message(m)

    def dead_letter(self, msg: ReceivedMessage, reason: str) -> None:
        receiver, m = msg.handle
        receiver.dead_letter_message(m, reason="geoetl", error_description=reason[:1000])

    def renew_lock(self, msg: ReceivedMessage) -> bool:
        receiver, m = msg.handle
        try:
            receiver.renew_message_lock(m)
            return True
        except Exception:  # noqa: BLE001 - any SDK failure means the lock is gone
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
