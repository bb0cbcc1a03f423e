"""Process-wide logging: our level for geoetl, quiet SDK chatter (request dumps can carry secrets)."""

from __future__ import annotations

import logging

from config.settings import get_settings

NOISY = ("azure", "azure.core.pipeline.policies.http_logging_policy", "uamqp", "httpx", "urllib3")


def configure_logging() -> None:
    level = get_settings().log_level.upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s")
    logging.getLogger().setLevel(level)
    for name in NOISY:
        logging.getLogger(name).setLevel(logging.WARNING)
