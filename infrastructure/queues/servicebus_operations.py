"""Service Bus statistics and dead letters, through the management API and the dead-letter sub-queue.

Kept apart from the send/receive path (servicebus.py) and mixed into ServiceBusQueue. No emulator
runs here, so the tests stop at the SDK boundary (a fake client that records the calls).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from infrastructure.queues.base import DeadLetter, DeadLetterPage, QueueStats

REPLAY_WAIT_SECONDS = 5


def _body(message: Any) -> dict[str, Any]:
    raw = message.body
    if not isinstance(raw, bytes | str):
        raw = b"".join(raw)
    try:
        value = json.loads(raw)
    except ValueError:
        return {"unparsed": raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)}
    return value if isinstance(value, dict) else {"value": value}


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


class ServiceBusOperations:
    """Needs `self.client` (ServiceBusClient) and `self.settings`."""

    client: Any
    settings: Any
    _admin: Any = None

    @property
    def admin(self) -> Any:
        if self._admin is None:
            from azure.servicebus.management import ServiceBusAdministrationClient

            conn_str = self.settings.service_bus_connection_string.get_secret_value()
            if conn_str:
                self._admin = ServiceBusAdministrationClient.from_connection_string(conn_str)
            else:
                from azure.identity import DefaultAzureCredential

                self._admin = ServiceBusAdministrationClient(self.settings.service_bus_namespace,
                                                             DefaultAzureCredential())
        return self._admin

    def queue_stats(self, queues: Sequence[str]) -> dict[str, QueueStats]:
        out = {}
        for queue in queues:
            props = self.admin.get_queue_runtime_properties(queue)
            with self.client.get_queue_receiver(queue_name=queue) as receiver:
                oldest = receiver.peek_messages(max_message_count=1)
            age = None
            if oldest and oldest[0].enqueued_time_utc is not None:
                age = max(0.0, (datetime.now(UTC) - oldest[0].enqueued_time_utc).total_seconds())
            out[queue] = QueueStats(
                depth=int(props.active_message_count or 0) + int(props.scheduled_message_count or 0),
                oldest_age_seconds=age,
                dead_letters=int(props.dead_letter_message_count or 0),
                scheduled=int(props.scheduled_message_count or 0),
            )
        return out

    def _dead_letter_receiver(self, queue: str) -> Any:
        from azure.servicebus import ServiceBusSubQueue

        return self.client.get_queue_receiver(queue_name=queue, sub_queue=ServiceBusSubQueue.DEAD_LETTER)

    def dead_letters(self, queue: str, limit: int, after: str | None = None) -> DeadLetterPage:
        """Peeked (not locked) from the dead-letter sub-queue; the cursor is the sequence number."""
        start = int(after) + 1 if after else 0
        with self._dead_letter_receiver(queue) as receiver:
            peeked = receiver.peek_messages(max_message_count=limit, sequence_number=start)
        messages = [
            DeadLetter(
                message_id=str(m.message_id),
                body=_body(m),
                reason=" - ".join(p for p in (m.dead_letter_reason, m.dead_letter_error_description) if p) or None,
                dead_lettered_at=None,  # Service Bus does not record it
                enqueued_at=_iso(m.enqueued_time_utc),
                delivery_count=int(m.delivery_count or 0),
                cursor=str(m.sequence_number),
            )
            for m in peeked
        ]
        total = int(self.admin.get_queue_runtime_properties(queue).dead_letter_message_count or 0)
        next_cursor = messages[-1].cursor if len(messages) == limit else None
        return DeadLetterPage(messages, total, next_cursor)

    def replay_dead_letters(self, queue: str, message_ids: Sequence[str] | None, limit: int) -> list[str]:
        """Each chosen dead letter is sent to its queue again (under a new id, or duplicate detection
        would drop it) and then removed from the dead-letter sub-queue; the others are left there."""
        from azure.servicebus import ServiceBusMessage

        wanted = set(message_ids) if message_ids is not None else None
        replayed: list[str] = []
        with self._dead_letter_receiver(queue) as receiver, self.client.get_queue_sender(queue_name=queue) as sender:
            received = receiver.receive_messages(max_message_count=limit, max_wait_time=REPLAY_WAIT_SECONDS)
            for m in received:
                if wanted is not None and str(m.message_id) not in wanted:
                    receiver.abandon_message(m)
                    continue
                copy = ServiceBusMessage(
                    json.dumps(_body(m)),
                    message_id=f"{m.message_id}:replay:{m.sequence_number}",
                    content_type="application/json",
                )
                sender.send_messages(copy)
                receiver.complete_message(m)
                replayed.append(str(m.message_id))
        return replayed
