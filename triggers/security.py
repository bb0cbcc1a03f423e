"""One ASGI middleware in front of every route: input limits and the security headers.

- query values are measured before routing (triggers/serving/guards.py): over-long or deeply
  nested filters, NUL characters and NaN bboxes get a 400 naming the limit;
- a request body larger than MAX_REQUEST_BYTES gets a 413 (checked on Content-Length and
  again while reading, for chunked bodies); a JSON body nested deeper than MAX_JSON_DEPTH, or
  one that is not a JSON object, gets a 400 — before any JSON parser sees it;
- every answer carries `X-Content-Type-Options: nosniff`; HTML pages carry a
  Content-Security-Policy that allows scripts, styles and workers from this origin only (no
  inline script, no CDN), JSON answers one that allows nothing.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qsl

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from config import get_settings
from triggers.errors import error_body
from triggers.serving import guards

HTML_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "font-src 'self' data:; connect-src 'self'; worker-src 'self' blob:; child-src 'self' blob:; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
API_CSP = "default-src 'none'; frame-ancestors 'none'"
BODY_METHODS = ("POST", "PUT", "PATCH")
JSON_NON_OBJECT_STARTS = {bytes([c]) for c in b'["-0123456789tfn'}
DRAIN_FACTOR = 16  # bodies up to this many times the cap are read (and dropped) before the 413


def json_depth(raw: bytes) -> int:
    """Deepest nesting of a JSON text, strings skipped exactly as JSON defines them."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in raw:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            if depth > deepest:
                deepest = depth
        elif byte in (0x5D, 0x7D) and depth:
            depth -= 1
    return deepest


class BodyRefused(Exception):
    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status, self.kind, self.message = status, kind, message


def check_body(raw: bytes, path: str) -> None:
    """Depth and shape of a request body (every body of this API is a JSON object)."""
    limit = get_settings().max_json_depth
    text = raw.lstrip()
    if not text:
        return
    if text[:1] in JSON_NON_OBJECT_STARTS:  # JSON, but not an object (anything else: the route says why)
        raise BodyRefused(400, "validation_error", "the request body must be a JSON object ({...})")
    if text.count(b"[") + text.count(b"{") > limit and json_depth(text) > limit:
        raise BodyRefused(400, "invalid_json", f"the request body is nested more than {limit} levels deep "
                          "(MAX_JSON_DEPTH)")
    if path.startswith("/api/stac"):
        try:
            body = json.loads(text)
        except ValueError:
            return  # the STAC API answers invalid JSON itself
        guards.check_search_body(body)


STAC_ERROR_CODES = {400: "BadRequest", 413: "RequestEntityTooLarge"}


def _refusal(status: int, kind: str, message: str, path: str = "") -> JSONResponse:
    """The project's error body; under the STAC API also its `code` and `description` (STAC API's
    error shape, as its own handlers answer)."""
    body = error_body(kind, message)
    if path.startswith("/api/stac"):
        body |= {"code": STAC_ERROR_CODES.get(status, "BadRequest"), "description": message}
    return JSONResponse(body, status_code=status)


class Hardening:
    """The middleware; see the module docstring."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            guards.check_forwarded(scope.get("headers") or [])
            guards.check_path(scope.get("path", ""))
            guards.check_query(_query_items(scope))
            if scope["method"] in BODY_METHODS:
                raw = await _read_body(scope, receive)
                check_body(raw, scope.get("path", ""))
                receive = _replay(raw, receive)
        except guards.QueryRefused as exc:
            refusal = _refusal(400, "validation_error", str(exc), scope.get("path", ""))
        except BodyRefused as exc:
            refusal = _refusal(exc.status, exc.kind, exc.message, scope.get("path", ""))
        else:
            await self.app(scope, receive, _with_headers(send))
            return
        await refusal(scope, receive, _with_headers(send))


def _query_items(scope: Scope) -> list[tuple[str, str]]:
    """The query as Starlette decodes it (what the routes will see)."""
    qs = scope.get("query_string", b"").decode("latin-1")
    return parse_qsl(qs, keep_blank_values=True, encoding="utf-8", errors="replace")


async def _read_body(scope: Scope, receive: Receive) -> bytes:
    limit = get_settings().max_request_bytes
    too_large = BodyRefused(413, "request_too_large", f"the request body is larger than {limit} bytes "
                            "(MAX_REQUEST_BYTES)")
    declared = dict(scope.get("headers") or []).get(b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > DRAIN_FACTOR * limit:
        raise too_large  # not worth reading: answered at once (the client may see the connection close)
    chunks, size, more = [], 0, True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunk = message.get("body", b"")
        more = bool(message.get("more_body", False))
        size += len(chunk)
        if size > limit:
            # read the rest without keeping it, so that the client reads the 413 instead of a reset
            while more and size <= DRAIN_FACTOR * limit:
                message = await receive()
                size += len(message.get("body", b""))
                more = message["type"] == "http.request" and bool(message.get("more_body", False))
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def _replay(raw: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": raw, "more_body": False}
        return await receive()

    return replay


def _with_headers(send: Send) -> Send:
    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers: list[Any] = [(k, v) for k, v in message.get("headers", [])
                                  if k.lower() not in (b"content-security-policy", b"x-content-type-options")]
            ctype = next((v for k, v in headers if k.lower() == b"content-type"), b"")
            csp = API_CSP if b"json" in ctype else HTML_CSP  # scripts and workers get the page's policy
            headers += [(b"x-content-type-options", b"nosniff"), (b"content-security-policy", csp.encode()),
                        (b"referrer-policy", b"same-origin")]
            message = {**message, "headers": headers}
        await send(message)

    return wrapped
