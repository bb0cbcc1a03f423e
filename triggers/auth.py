"""API keys in the Azure Functions convention: `x-functions-key` header or `?code=`."""

from __future__ import annotations

import hmac

from fastapi import Request

from config import get_settings
from triggers.errors import ApiError


def _presented(request: Request) -> str | None:
    return request.headers.get("x-functions-key") or request.query_params.get("code")


def key_is_valid(key: str | None) -> bool:
    keys = get_settings().api_key_list
    if not keys:
        return True
    return key is not None and any(hmac.compare_digest(key.encode(), k.encode()) for k in keys)


def presented_key_is_valid(request: Request) -> bool:
    return key_is_valid(_presented(request))


def require_write_key(request: Request) -> None:
    """Writes need a key whenever API_KEYS is set."""
    if not key_is_valid(_presented(request)):
        raise ApiError(401, "unauthorized", "this endpoint needs an API key: send it as x-functions-key or ?code=")


def require_read_key(request: Request) -> None:
    """Reads stay public unless PROTECT_READS is set."""
    if get_settings().protect_reads:
        require_write_key(request)
