"""Process-wide logging: our level for geoetl, quiet SDK chatter, API keys redacted from access logs."""

from __future__ import annotations

import logging
import re

from config.settings import get_settings

NOISY = ("azure", "azure.core.pipeline.policies.http_logging_policy", "uamqp", "httpx", "urllib3")
KEY_IN_QUERY = re.compile(r"([?&](?:code|key|api_key|sig)=)[^&\s\"]*", re.IGNORECASE)


class RedactKeys(logging.Filter):
    """Keys sent as ?code= (the Functions convention) would otherwise land in every access log line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(KEY_IN_QUERY.sub(r"\1***", a) if isinstance(a, str) else a for a in record.args)
        if isinstance(record.msg, str):
            record.msg = KEY_IN_QUERY.sub(r"\1***", record.msg)
        return True


def configure_logging() -> None:
    level = get_settings().log_level.upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s")
    logging.getLogger().setLevel(level)
    for name in NOISY:
        logging.getLogger(name).setLevel(logging.WARNING)
    for name in ("uvicorn.access", "uvicorn.error", "geoetl.api"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactKeys) for f in logger.filters):
            logger.addFilter(RedactKeys())
