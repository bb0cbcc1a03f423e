"""Process-wide logging: our level for geoetl, quiet SDK chatter, API keys redacted from access logs."""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime
from urllib.parse import unquote_plus

from config.settings import get_settings

NOISY = ("azure", "azure.core.pipeline.policies.http_logging_policy", "uamqp", "httpx", "urllib3")
SECRET_PARAMS = {"code", "key", "api_key", "sig", "x-functions-key"}
QUERY_PAIR = re.compile(r"([?&])([^=&?\s\"#]*)=([^&\s\"#]*)")


def _redact_pair(match: re.Match[str]) -> str:
    # The name is compared decoded, as the API reads it: ?co%64e= is ?code=
    name = unquote_plus(unquote_plus(match.group(2))).strip().lower()
    return f"{match.group(1)}{match.group(2)}=***" if name in SECRET_PARAMS else match.group(0)


def redact_query(text: str) -> str:
    """Text with the values of key-like query parameters replaced by ***."""
    return QUERY_PAIR.sub(_redact_pair, text)


class RedactKeys(logging.Filter):
    """Keys sent as ?code= (the Functions convention) would otherwise land in every access log line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(redact_query(a) if isinstance(a, str) else a for a in record.args)
        if isinstance(record.msg, str):
            record.msg = redact_query(record.msg)
        return True


class JsonLines(logging.Formatter):
    """LOG_FORMAT=json: one JSON object per line, with the job and task being worked on and the trace id."""

    def format(self, record: logging.LogRecord) -> str:
        from opentelemetry import trace

        from infrastructure.telemetry import current_job_id, current_task_id

        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "process": record.process,
            "thread": record.threadName,
            "message": record.getMessage(),
        }
        job_id, task_id = current_job_id.get(), current_task_id.get()
        if job_id:
            line["job_id"] = job_id
        if task_id:
            line["task_id"] = task_id
        span = trace.get_current_span().get_span_context()
        if span.is_valid:
            line["trace_id"] = format(span.trace_id, "032x")
            line["span_id"] = format(span.span_id, "016x")
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def configure_logging() -> None:
    settings = get_settings()
    level = settings.log_level.upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s")
    if settings.log_format == "json":  # uvicorn's own loggers too: it configured them before us
        for name in ("", "uvicorn", "uvicorn.error", "uvicorn.access"):
            for handler in logging.getLogger(name).handlers:
                handler.setFormatter(JsonLines())
    logging.getLogger().setLevel(level)
    for name in NOISY:
        logging.getLogger(name).setLevel(logging.WARNING)
    for name in ("uvicorn.access", "uvicorn.error", "geoetl.api"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactKeys) for f in logger.filters):
            logger.addFilter(RedactKeys())
