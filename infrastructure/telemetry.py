"""OpenTelemetry: one trace per job, carried from the HTTP request through every queue message.

The W3C trace context of the span that sends a message is written into the message body
(`trace_context`); the worker that handles it continues that trace, so the submit request, each
stage's job message and every task share one trace id. FastAPI's own telemetry makes the HTTP
server span. Spans are exported to Application Insights (azure-monitor-opentelemetry) when
APPLICATIONINSIGHTS_CONNECTION_STRING is set; otherwise the API's no-op tracer records nothing,
and the context still travels with the messages.
"""

from __future__ import annotations

import contextvars
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind

log = logging.getLogger(__name__)
TRACER_NAME = "geoetl"

# What the current thread works on, for log lines (config.logging's JSON formatter reads these).
current_job_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("geoetl_job_id", default=None)
current_task_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("geoetl_task_id", default=None)

_configured = False
_configure_lock = threading.Lock()
_provider: Any = None  # a TracerProvider that overrides the global one (tests use an in-memory exporter)


def use_provider(provider: Any) -> None:
    """Trace with this provider instead of the global one (None restores the global)."""
    global _provider
    _provider = provider


def provider_override() -> Any:
    return _provider


def provider() -> Any:
    return _provider if _provider is not None else trace.get_tracer_provider()


def configure_tracing(connection_string: str) -> bool:
    """Export spans to Application Insights when a connection string is given (once per process)."""
    global _configured
    if not connection_string:
        return False
    with _configure_lock:
        if _configured:
            return True
        from azure.monitor.opentelemetry import configure_azure_monitor

        configure_azure_monitor(
            connection_string=connection_string,
            # FastAPI traces its requests natively; a second instrumentation would double every span.
            instrumentation_options={"fastapi": {"enabled": False}},
            enable_live_metrics=False,
        )
        _configured = True
    log.info("tracing: spans are exported to Application Insights")
    return True


def configure_from_settings() -> bool:
    from config import get_settings

    return configure_tracing(get_settings().applicationinsights_connection_string.get_secret_value())


def tracer() -> trace.Tracer:
    return provider().get_tracer(TRACER_NAME)


def trace_context() -> dict[str, str]:
    """The current span's W3C trace context (`traceparent`, `tracestate`), to travel in a message."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


@contextmanager
def message_span(kind: str, body: dict[str, Any], trace_carrier: dict[str, str] | None) -> Iterator[Any]:
    """A consumer span for one queue message, continuing the trace its sender started."""
    parent = propagate.extract(trace_carrier or {})
    job_id = body.get("parent_job_id") or body.get("job_id")
    attributes = {
        "geoetl.job_id": job_id or "",
        "geoetl.job_type": body.get("job_type") or "",
        "geoetl.stage": int(body.get("stage") or 0),
        "messaging.operation.type": "process",
    }
    if body.get("task_id"):
        attributes["geoetl.task_id"] = body["task_id"]
        attributes["geoetl.task_type"] = body.get("task_type") or ""
    if kind == "task":
        name = f"task {body.get('task_type')}"
    else:
        name = f"job {body.get('job_type')} stage {body.get('stage')}"
    job_token = current_job_id.set(job_id)
    task_token = current_task_id.set(body.get("task_id"))
    try:
        with tracer().start_as_current_span(name, context=parent, kind=SpanKind.CONSUMER, attributes=attributes) as s:
            yield s
    finally:
        current_task_id.reset(task_token)
        current_job_id.reset(job_token)
