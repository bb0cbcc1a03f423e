"""Operating geoetl: /api/metrics against the database, dead letters, retention, traces, JSON logs."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import RUN_DIR
from tests.helpers import submit


def _families(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def _samples(family: Any, name: str | None = None) -> dict[tuple[tuple[str, str], ...], float]:
    return {tuple(sorted(s.labels.items())): s.value for s in family.samples if name is None or s.name == name}


def _dead_letter(queue_name: str, body: dict[str, Any], reason: str) -> str:
    """A message sent, received and dead-lettered through the postgres queue itself."""
    from infrastructure import database
    from infrastructure.queues import OutgoingMessage, get_queue

    queue = get_queue()
    message_id = f"test-dl-{uuid.uuid4().hex[:12]}"
    with database.connection() as conn:
        queue.send(conn, queue_name, [OutgoingMessage(message_id, body)])
    for _ in range(200):  # other messages of the queue may come first: give those back
        got = queue.receive(queue_name, 50)
        mine = [m for m in got if m.message_id == message_id]
        for m in got:
            if m.message_id != message_id:
                queue.release(m)
        if mine:
            queue.dead_letter(mine[0], reason)
            return message_id
    raise AssertionError("the message sent was never received")


def test_metrics_are_what_the_database_holds(api_server: str, db: Any, drain: Any, machine: Any, nonce: str) -> None:
    from config import get_settings
    from core.janitor import Janitor

    ok = submit("hello_world", {"n": 6, "message": f"metrics {nonce}"})
    bad = submit("hello_world", {"n": 2, "failure_rate": 1.0, "message": f"metrics fail {nonce}"})
    assert drain(ok) == "completed" and drain(bad) == "failed"
    s = get_settings()
    _dead_letter(s.tasks_queue, {"task_id": "x", "parent_job_id": "0" * 64}, "metrics test: malformed")
    assert Janitor(machine).run_once()["ran"]

    r = requests.get(f"{api_server}/metrics", timeout=30)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    fam = _families(r.text)

    jobs = {(("job_type", x["job_type"]), ("status", x["status"])): float(x["n"]) for x in db.execute(
        "SELECT job_type, status, count(*) AS n FROM app.jobs GROUP BY 1, 2").fetchall()}
    assert _samples(fam["geoetl_jobs"]) == jobs
    assert jobs[(("job_type", "hello_world"), ("status", "failed"))] >= 1
    tasks = {(("status", x["status"]), ("task_type", x["task_type"])): float(x["n"]) for x in db.execute(
        "SELECT task_type, status, count(*) AS n FROM app.tasks GROUP BY 1, 2").fetchall()}
    assert _samples(fam["geoetl_tasks"]) == tasks

    durations: dict[str, list[float]] = {}
    for x in db.execute(
        "SELECT task_type, extract(epoch FROM completed_at - started_at)::float8 AS d FROM app.tasks"
        " WHERE status = 'completed' AND started_at IS NOT NULL AND completed_at IS NOT NULL"
    ).fetchall():
        durations.setdefault(x["task_type"], []).append(x["d"])
    hist = fam["geoetl_task_duration_seconds"]
    counts = _samples(hist, "geoetl_task_duration_seconds_count")
    sums = _samples(hist, "geoetl_task_duration_seconds_sum")
    buckets = _samples(hist, "geoetl_task_duration_seconds_bucket")
    assert {k[0][1]: v for k, v in counts.items()} == {t: float(len(d)) for t, d in durations.items()}
    for task_type, values in durations.items():
        assert sums[(("task_type", task_type),)] == pytest.approx(sum(values), rel=1e-9, abs=1e-9)
        for bound in ("0.01", "0.1", "1.0", "+Inf"):
            want = sum(1 for v in values if bound == "+Inf" or v <= float(bound))
            assert buckets[(("le", bound), ("task_type", task_type))] == want, (task_type, bound)

    rows = {(("job_type", x["job_type"]),): float(x["n"]) for x in db.execute(
        "SELECT job_type, sum((result_data ->> 'rows_uploaded')::bigint) AS n FROM app.tasks"
        " WHERE status = 'completed' AND result_data ? 'rows_uploaded' GROUP BY 1").fetchall()}
    assert _samples(fam["geoetl_rows_loaded"]) == rows

    for queue in (s.jobs_queue, s.tasks_queue):
        row = db.execute(
            "SELECT count(*) FILTER (WHERE dead_lettered_at IS NULL) AS depth,"
            " count(*) FILTER (WHERE dead_lettered_at IS NOT NULL) AS dead FROM app.queue_messages WHERE queue = %s",
            [queue],
        ).fetchone()
        assert _samples(fam["geoetl_queue_depth"])[(("queue", queue),)] == row["depth"]
        assert _samples(fam["geoetl_queue_dead_letters"])[(("queue", queue),)] == row["dead"]
        assert (("queue", queue),) in _samples(fam["geoetl_queue_oldest_message_age_seconds"])
    assert _samples(fam["geoetl_queue_dead_letters"])[(("queue", s.tasks_queue),)] >= 1

    runs = db.execute("SELECT value FROM app.janitor_counters WHERE name = 'runs'").fetchone()["value"]
    assert runs >= 1
    assert _samples(fam["geoetl_janitor_runs"], "geoetl_janitor_runs_total") == {(): float(runs)}


def test_oldest_message_age_follows_the_queue(api_server: str, db: Any) -> None:
    from config import get_settings
    from infrastructure import database
    from infrastructure.queues import OutgoingMessage, get_queue

    queue = get_settings().jobs_queue
    mid = f"age-{uuid.uuid4().hex[:10]}"
    with database.connection() as conn:
        get_queue().send(conn, queue, [OutgoingMessage(mid, {"job_id": "f" * 64, "stage": 1}, 3600)])
    db.execute("UPDATE app.queue_messages SET enqueued_at = now() - interval '2 hours' WHERE message_id = %s", [mid])
    try:
        fam = _families(requests.get(f"{api_server}/metrics", timeout=30).text)
        age = _samples(fam["geoetl_queue_oldest_message_age_seconds"])[(("queue", queue),)]
        assert 7200 <= age < 7200 + 120
        queues = requests.get(f"{api_server}/dashboard/data/queues", timeout=30).json()["queues"][queue]
        assert queues["scheduled"] >= 1 and queues["oldest_age_seconds"] >= 7200
    finally:
        db.execute("DELETE FROM app.queue_messages WHERE message_id = %s", [mid])


def test_dead_letters_listed_paged_and_replayed(api_server: str, db: Any) -> None:
    from config import get_settings

    queue = get_settings().tasks_queue
    ids = [_dead_letter(queue, {"task_id": f"t{i}", "n": i}, f"reason {i}: <b>broken</b>") for i in range(3)]
    seen: list[dict[str, Any]] = []
    after = None
    while True:
        params: dict[str, Any] = {"limit": 2} | ({"after": after} if after else {})
        page = requests.get(f"{api_server}/queues/{queue}/deadletters", params=params, timeout=30)
        assert page.status_code == 200, page.text
        body = page.json()
        assert body["total"] >= 3 and len(body["messages"]) <= 2
        seen += body["messages"]
        after = body["next_cursor"]
        if after is None:
            break
    mine = {m["message_id"]: m for m in seen if m["message_id"] in ids}
    assert list(mine) == ids  # oldest first, each once across the pages
    assert mine[ids[1]]["reason"] == "reason 1: <b>broken</b>" and mine[ids[1]]["body"]["n"] == 1
    assert mine[ids[0]]["delivery_count"] == 1 and mine[ids[0]]["dead_lettered_at"]

    r = requests.post(f"{api_server}/queues/{queue}/deadletters/replay", json={"message_ids": ids[:2]}, timeout=30)
    assert r.status_code == 200 and sorted(r.json()["message_ids"]) == sorted(ids[:2])
    rows = {x["message_id"]: x for x in db.execute(
        "SELECT message_id, dead_lettered_at, dead_letter_reason, delivery_count, lock_token,"
        " visible_at <= clock_timestamp() AS visible FROM app.queue_messages WHERE message_id = ANY(%s)",
        [ids]).fetchall()}
    for mid in ids[:2]:
        assert rows[mid]["dead_lettered_at"] is None and rows[mid]["visible"] and rows[mid]["delivery_count"] == 0
    assert rows[ids[2]]["dead_lettered_at"] is not None
    db.execute("DELETE FROM app.queue_messages WHERE message_id = ANY(%s)", [ids])


def test_dead_letter_requests_that_are_wrong_get_a_4xx(api_server: str) -> None:
    assert requests.get(f"{api_server}/queues/nope/deadletters", timeout=30).status_code == 404
    r = requests.post(f"{api_server}/queues/nope/deadletters/replay", json={}, timeout=30)
    assert r.status_code == 404 and r.json()["error"] == "unknown_queue"
    from config import get_settings

    q = get_settings().jobs_queue
    assert requests.get(f"{api_server}/queues/{q}/deadletters", params={"after": "x"}, timeout=30).status_code == 400
    assert requests.get(f"{api_server}/queues/{q}/deadletters", params={"limit": 0}, timeout=30).status_code == 400
    bad = requests.post(f"{api_server}/queues/{q}/deadletters/replay", data=b"{nope", timeout=30)
    assert bad.status_code == 400 and bad.json()["error"] == "invalid_request"
    bad = requests.post(f"{api_server}/queues/{q}/deadletters/replay", json={"limit": 0}, timeout=30)
    assert bad.status_code == 400 and "limit" in bad.json()["message"]


def _age(db: Any, job_id: str, days: int) -> None:
    db.execute(
        "UPDATE app.jobs SET created_at = now() - make_interval(days => %s), updated_at = now() - make_interval("
        "days => %s), completed_at = CASE WHEN status IN ('completed', 'failed') THEN now() - make_interval("
        "days => %s) END WHERE job_id = %s",
        [days + 1, days, days, job_id],
    )


def test_retention_deletes_old_finished_jobs_only(db: Any, drain: Any, nonce: str, monkeypatch: Any) -> None:
    from config import get_settings
    from core import retention

    old = [submit("hello_world", {"n": 3, "message": f"old {i} {nonce}"}) for i in range(5)]
    recent = submit("hello_world", {"n": 2, "message": f"recent {nonce}"})
    for job in [*old, recent]:
        assert drain(job) == "completed"
    running = submit("hello_world", {"n": 2, "message": f"running {nonce}"})  # never drained: stays queued
    published = submit("hello_world", {"n": 1, "message": f"published {nonce}"})
    assert drain(published) == "completed"
    for job in [*old, running, published]:
        _age(db, job, 45)
    db.execute("UPDATE app.jobs SET status = 'processing' WHERE job_id = %s", [running])
    # a dataset's STAC item names `published` as its origin
    item_id = f"geo.retention_{nonce}"
    db.execute("SET search_path TO pgstac, public")
    db.execute("SELECT pgstac.create_item(%s::jsonb)", [json.dumps({
        "type": "Feature", "stac_version": "1.0.0", "id": item_id, "collection": get_settings().stac_collection,
        "bbox": [0, 0, 1, 1], "geometry": {"type": "Point", "coordinates": [0.5, 0.5]},
        "properties": {"datetime": "2024-01-01T00:00:00Z", "etl:job_id": published}, "links": [], "assets": {},
    })])
    s = get_settings()
    old_dead = _dead_letter(s.tasks_queue, {"task_id": "t", "parent_job_id": old[0]}, "old job's dead letter")
    stray = _dead_letter(s.jobs_queue, {"job_id": "e" * 64}, "stray")
    db.execute("UPDATE app.queue_messages SET dead_lettered_at = now() - interval '40 days' WHERE message_id = %s",
               [stray])
    db.execute("INSERT INTO app.outbox (queue, message_id, body, created_at, sent_at) VALUES"
               " ('q', %s, '{}', now() - interval '50 days', now() - interval '50 days'),"
               " ('q', %s, '{}', now(), now())", [f"sent-old-{nonce}", f"sent-new-{nonce}"])

    monkeypatch.setattr(s, "job_retention_days", 0)
    assert retention.prune(s).jobs_deleted == 0  # 0 keeps everything
    monkeypatch.setattr(s, "job_retention_days", 30)
    report = retention.prune(s, batch=2)  # several small batches
    assert report.jobs_deleted >= 5 and report.outbox_deleted >= 1 and report.messages_deleted >= 2

    left = {r["job_id"] for r in db.execute("SELECT job_id FROM app.jobs WHERE job_id = ANY(%s)",
                                            [[*old, recent, running, published]]).fetchall()}
    assert left == {recent, running, published}
    for table, column in (("app.tasks", "parent_job_id"), ("app.job_events", "job_id")):
        n = db.execute(f"SELECT count(*) AS n FROM {table} WHERE {column} = ANY(%s)", [old]).fetchone()["n"]
        assert n == 0, table
        assert db.execute(f"SELECT count(*) AS n FROM {table} WHERE {column} = %s", [recent]).fetchone()["n"] > 0
    gone = db.execute("SELECT message_id FROM app.queue_messages WHERE message_id = ANY(%s)",
                      [[old_dead, stray]]).fetchall()
    assert gone == []
    outbox = {r["message_id"] for r in db.execute("SELECT message_id FROM app.outbox WHERE message_id LIKE %s",
                                                  [f"sent-%-{nonce}"]).fetchall()}
    assert outbox == {f"sent-new-{nonce}"}
    db.execute("SELECT pgstac.delete_item(%s, %s)", [item_id, s.stac_collection])
    db.execute("UPDATE app.jobs SET status = 'failed', completed_at = now() WHERE job_id = %s", [running])


def test_janitor_runs_retention_and_counts_its_work(db: Any, drain: Any, machine: Any, nonce: str) -> None:
    from core.janitor import Janitor

    job = submit("hello_world", {"n": 2, "message": f"janitor retention {nonce}"})
    assert drain(job) == "completed"
    _age(db, job, 400)
    before = {r["name"]: r["value"] for r in db.execute("SELECT name, value FROM app.janitor_counters").fetchall()}
    report = Janitor(machine).run_once()
    assert report["ran"] and report["jobs_deleted"] >= 1
    assert db.execute("SELECT 1 FROM app.jobs WHERE job_id = %s", [job]).fetchone() is None
    after = {r["name"]: r["value"] for r in db.execute("SELECT name, value FROM app.janitor_counters").fetchall()}
    assert after["runs"] == before.get("runs", 0) + 1
    assert after["jobs_deleted"] == before.get("jobs_deleted", 0) + report["jobs_deleted"]


@pytest.fixture
def spans() -> Any:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from infrastructure import telemetry

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry.use_provider(provider)
    try:
        yield exporter
    finally:
        telemetry.use_provider(None)
        provider.shutdown()


def test_one_trace_from_the_request_through_every_message(spans: Any, drain: Any, db: Any, nonce: str) -> None:
    from fastapi.testclient import TestClient
    from opentelemetry.trace import SpanKind

    from triggers.app import create_app

    client = TestClient(create_app())
    r = client.post("/api/jobs/submit/hello_world", json={"n": 3, "message": f"trace {nonce}"})
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    message = db.execute("SELECT body FROM app.queue_messages WHERE body ->> 'job_id' = %s", [job_id]).fetchone()
    traceparent = message["body"]["trace_context"]["traceparent"]
    assert drain(job_id) == "completed"

    finished = spans.get_finished_spans()
    server = [s for s in finished if s.kind == SpanKind.SERVER and "hello_world" in str(s.attributes)]
    assert len(server) == 1, [s.name for s in finished]
    trace_id = server[0].context.trace_id
    assert traceparent.split("-")[1] == format(trace_id, "032x")  # the job message carries the request's trace
    mine = [s for s in finished if s.attributes.get("geoetl.job_id") == job_id]
    job_spans = [s for s in mine if s.name.startswith("job hello_world")]
    task_spans = [s for s in mine if s.name.startswith("task ")]
    assert len(job_spans) == 2 and len(task_spans) == 4  # two stages; 3 greetings and the sum
    assert {s.context.trace_id for s in mine} == {trace_id}
    assert all(s.kind == SpanKind.CONSUMER and s.parent is not None for s in mine)
    stage1 = next(s for s in job_spans if s.attributes["geoetl.stage"] == 1)
    greetings = [s for s in task_spans if s.attributes["geoetl.stage"] == 1]
    assert {s.parent.span_id for s in greetings} == {stage1.context.span_id}  # tasks follow their fan-out


def test_json_log_lines_carry_the_job_and_task(workers: Any, monkeypatch: Any, nonce: str) -> None:
    from tests.helpers import wait_for_job

    monkeypatch.setenv("LOG_FORMAT", "json")
    proc = workers.start(1, concurrency=1)[0]
    job = submit("hello_world", {"n": 2, "failure_rate": 1.0, "message": f"json logs {nonce}"})
    assert wait_for_job(job, timeout=120) == "failed"
    log_file = RUN_DIR / f"worker-{workers.procs.index(proc)}.log"
    deadline = time.time() + 20
    lines: list[dict[str, Any]] = []
    while time.time() < deadline and not lines:
        lines = [json.loads(x) for x in log_file.read_text().splitlines() if job in x and x.startswith("{")]
        time.sleep(0.2)
    retries = [x for x in lines if "retrying" in x["message"]]
    assert retries, lines
    for line in retries:
        assert line["job_id"] == job and line["task_id"] in line["message"]
        assert line["level"] == "WARNING" and line["logger"] and line["time"]


def test_replay_ids_postgres_cannot_hold_are_a_400(api_server: str) -> None:
    from config import get_settings

    url = f"{api_server}/queues/{get_settings().tasks_queue}/deadletters/replay"
    for ids in (["a\u0000b"], ["\ud800"], [""], ["x" * 501]):
        r = requests.post(url, data=json.dumps({"message_ids": ids}), headers={"Content-Type": "application/json"},
                          timeout=30)
        assert r.status_code == 400 and r.json()["error"] == "invalid_request", (ids, r.text)
    big = requests.get(f"{api_server}/queues/{get_settings().tasks_queue}/deadletters",
                       params={"after": "9" * 19}, timeout=30)
    assert big.status_code == 400


def test_job_list_filters_by_creation_time(api_server: str, db: Any, nonce: str) -> None:
    from datetime import UTC, datetime, timedelta

    old = submit("hello_world", {"n": 0, "message": f"time old {nonce}"})
    new = submit("hello_world", {"n": 0, "message": f"time new {nonce}"})
    db.execute("UPDATE app.jobs SET created_at = now() - interval '3 days' WHERE job_id = %s", [old])
    now = datetime.now(UTC)

    def ids(route: str, **params: str) -> set[str]:
        r = requests.get(f"{api_server}/{route}", params={"limit": 200, **params}, timeout=30)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["total_capped"] is False and body["total"] >= len(body["jobs"])
        return {j["job_id"] for j in body["jobs"]}

    for route in ("jobs", "dashboard/data/jobs"):
        recent = ids(route, since=(now - timedelta(days=1)).isoformat())
        assert new in recent and old not in recent
        earlier = ids(route, since=(now - timedelta(days=4)).isoformat(), until=(now - timedelta(days=2)).isoformat())
        assert old in earlier and new not in earlier
    bad = requests.get(f"{api_server}/dashboard/data/jobs", params={"since": "yesterday"}, timeout=30)
    assert bad.status_code == 400 and bad.json()["error"] == "invalid_time"
    assert requests.get(f"{api_server}/jobs", params={"until": "soon"}, timeout=30).status_code == 400
    assert requests.get(f"{api_server}/dashboard/data/jobs/{'0' * 64}", timeout=30).status_code == 404
    assert requests.get(f"{api_server}/dashboard/data/jobs/nope", timeout=30).status_code == 400
