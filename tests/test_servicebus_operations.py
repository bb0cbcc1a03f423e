"""Service Bus dead letters and queue statistics, up to the SDK boundary (no emulator runs here).

A fake client stands in for azure-servicebus: it holds a dead-letter sub-queue and records every
call, so these tests check what geoetl asks the SDK for, and that the API answers from it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from azure.servicebus import ServiceBusMessage, ServiceBusSubQueue


@dataclass
class FakeMessage:
    message_id: str
    payload: dict[str, Any]
    sequence_number: int
    dead_letter_reason: str | None = "MaxDeliveryCountExceeded"
    dead_letter_error_description: str | None = "delivered 10 times"
    enqueued_time_utc: datetime = field(default_factory=lambda: datetime.now(UTC) - timedelta(minutes=5))
    delivery_count: int = 10

    @property
    def body(self) -> Any:
        return iter([json.dumps(self.payload).encode()])  # the SDK yields the data sections


class FakeReceiver:
    def __init__(self, client: FakeClient, queue: str, sub_queue: Any) -> None:
        self.client, self.queue, self.sub_queue = client, queue, sub_queue

    def __enter__(self) -> FakeReceiver:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.client.calls.append(("close receiver", self.queue))

    def _messages(self) -> list[FakeMessage]:
        return self.client.dead[self.queue] if self.sub_queue == ServiceBusSubQueue.DEAD_LETTER \
            else self.client.active[self.queue]

    def peek_messages(self, max_message_count: int = 1, sequence_number: int = 0) -> list[FakeMessage]:
        self.client.calls.append(("peek", self.queue, self.sub_queue, max_message_count, sequence_number))
        return [m for m in self._messages() if m.sequence_number >= sequence_number][:max_message_count]

    def receive_messages(self, max_message_count: int = 1, max_wait_time: float | None = None) -> list[FakeMessage]:
        self.client.calls.append(("receive", self.queue, self.sub_queue, max_message_count))
        return list(self._messages()[:max_message_count])

    def complete_message(self, m: FakeMessage) -> None:
        self.client.calls.append(("complete", m.message_id))
        self._messages().remove(m)

    def abandon_message(self, m: FakeMessage) -> None:
        self.client.calls.append(("abandon", m.message_id))


class FakeSender:
    def __init__(self, client: FakeClient, queue: str) -> None:
        self.client, self.queue = client, queue

    def __enter__(self) -> FakeSender:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def send_messages(self, message: ServiceBusMessage) -> None:
        self.client.sent.append((self.queue, message))


@dataclass
class Properties:
    active_message_count: int
    scheduled_message_count: int
    dead_letter_message_count: int


class FakeClient:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.sent: list[tuple[str, ServiceBusMessage]] = []
        self.dead = {"geospatial-tasks": [FakeMessage(f"task:{i}", {"task_id": f"t{i}", "n": i}, 100 + i)
                                          for i in range(5)], "geospatial-jobs": []}
        self.active = {"geospatial-tasks": [FakeMessage("waiting", {"task_id": "w"}, 7,
                                                        enqueued_time_utc=datetime.now(UTC) - timedelta(hours=1))],
                       "geospatial-jobs": []}

    def get_queue_receiver(self, queue_name: str, sub_queue: Any = None) -> FakeReceiver:
        return FakeReceiver(self, queue_name, sub_queue)

    def get_queue_sender(self, queue_name: str) -> FakeSender:
        return FakeSender(self, queue_name)

    # the administration client's one call we use
    def get_queue_runtime_properties(self, queue: str) -> Properties:
        return Properties(len(self.active[queue]), 2, len(self.dead[queue]))


@pytest.fixture
def sb(database: str) -> tuple[Any, FakeClient]:
    from infrastructure.queues.servicebus import ServiceBusQueue

    client = FakeClient()
    q = ServiceBusQueue(client=client)
    q._admin = client
    return q, client


def test_dead_letters_are_peeked_from_the_dead_letter_sub_queue_page_by_page(sb: tuple[Any, FakeClient]) -> None:
    q, client = sb
    first = q.dead_letters("geospatial-tasks", 2)
    assert [m.message_id for m in first.messages] == ["task:0", "task:1"] and first.total == 5
    assert first.messages[0].body == {"task_id": "t0", "n": 0}
    assert first.messages[0].reason == "MaxDeliveryCountExceeded - delivered 10 times"
    assert first.next_cursor == "101"
    second = q.dead_letters("geospatial-tasks", 2, first.next_cursor)
    assert [m.message_id for m in second.messages] == ["task:2", "task:3"]
    last = q.dead_letters("geospatial-tasks", 2, second.next_cursor)
    assert [m.message_id for m in last.messages] == ["task:4"] and last.next_cursor is None
    peeks = [c for c in client.calls if c[0] == "peek"]
    assert all(c[2] == ServiceBusSubQueue.DEAD_LETTER for c in peeks)
    assert [c[4] for c in peeks] == [0, 102, 104]  # from the sequence number after the cursor
    assert not [c for c in client.calls if c[0] in ("receive", "complete")]  # listing locks nothing


def test_replay_sends_a_copy_under_a_new_id_then_removes_the_dead_letter(sb: tuple[Any, FakeClient]) -> None:
    q, client = sb
    replayed = q.replay_dead_letters("geospatial-tasks", ["task:1", "task:3"], 100)
    assert replayed == ["task:1", "task:3"]
    assert [(queue, m.message_id) for queue, m in client.sent] == [
        ("geospatial-tasks", "task:1:replay:101"), ("geospatial-tasks", "task:3:replay:103")]
    assert json.loads(str(client.sent[0][1])) == {"task_id": "t1", "n": 1}
    assert [m.message_id for m in client.dead["geospatial-tasks"]] == ["task:0", "task:2", "task:4"]
    settled = [c for c in client.calls if c[0] in ("complete", "abandon")]
    assert settled == [("abandon", "task:0"), ("complete", "task:1"), ("abandon", "task:2"),
                       ("complete", "task:3"), ("abandon", "task:4")]
    receives = [c for c in client.calls if c[0] == "receive"]
    assert receives == [("receive", "geospatial-tasks", ServiceBusSubQueue.DEAD_LETTER, 100)]
    # every sent copy precedes the completion of its dead letter: a failure in between leaves a duplicate,
    # never a loss (and handlers are idempotent)


def test_queue_stats_from_runtime_properties_and_the_oldest_message(sb: tuple[Any, FakeClient]) -> None:
    q, _ = sb
    stats = q.queue_stats(["geospatial-tasks", "geospatial-jobs"])
    tasks = stats["geospatial-tasks"]
    assert (tasks.depth, tasks.scheduled, tasks.dead_letters) == (3, 2, 5)
    assert 3590 < tasks.oldest_age_seconds < 3700
    assert stats["geospatial-jobs"].oldest_age_seconds is None and stats["geospatial-jobs"].dead_letters == 0


def test_the_api_lists_and_replays_service_bus_dead_letters(sb: tuple[Any, FakeClient], monkeypatch: Any) -> None:
    from fastapi.testclient import TestClient

    from triggers import deadletters_api
    from triggers.app import create_app

    q, client = sb
    monkeypatch.setattr(deadletters_api, "get_queue", lambda: q)
    api = TestClient(create_app())
    page = api.get("/api/queues/geospatial-tasks/deadletters", params={"limit": 3}).json()
    assert [m["message_id"] for m in page["messages"]] == ["task:0", "task:1", "task:2"]
    assert page["total"] == 5 and page["next_cursor"] == "102" and page["messages"][0]["dead_lettered_at"] is None
    r = api.post("/api/queues/geospatial-tasks/deadletters/replay", json={"limit": 2})
    assert r.status_code == 200 and r.json() == {"queue": "geospatial-tasks", "replayed": 2,
                                                 "message_ids": ["task:0", "task:1"]}
    assert len(client.dead["geospatial-tasks"]) == 3
