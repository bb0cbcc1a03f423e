"""Process-wide logging: our level for geoetl, quiet SDK chatter, API keys redacted from access logs."""

from __future__ import annotations

import logging
import re
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
