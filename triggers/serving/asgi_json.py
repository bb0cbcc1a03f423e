"""Small ASGI pieces the serving middlewares share: a JSON answer, and a rewrite of a JSON answer."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from starlette.types import Message, Send

GEOJSON_TYPES = ("Feature", "FeatureCollection")


async def send_json(send: Send, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
    data = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": data})


class JsonRewrite:
    """Buffers a 200 JSON answer (pages are small, and uncompressed where these middlewares sit) and
    rewrites the object it holds; with geojson_media, a Feature or FeatureCollection is labelled
    application/geo+json. Anything else passes through untouched."""

    def __init__(self, send: Send, rewrite: Callable[[dict[str, Any]], Any], geojson_media: bool = False) -> None:
        self.send, self.rewrite, self.geojson_media = send, rewrite, geojson_media
        self.start: Message | None = None
        self.body = b""

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            content_type = dict(message.get("headers", [])).get(b"content-type", b"")
            if message["status"] == 200 and b"json" in content_type:
                self.start = message
                return
            await self.send(message)
            return
        if self.start is None or message["type"] != "http.response.body":
            await self.send(message)
            return
        self.body += message.get("body", b"")
        if message.get("more_body", False):
            return
        media: bytes | None = None
        try:
            doc = json.loads(self.body)
            if isinstance(doc, dict):
                doc = self.rewrite(doc)
            body = json.dumps(doc).encode()
            if self.geojson_media and isinstance(doc, dict) and doc.get("type") in GEOJSON_TYPES:
                media = b"application/geo+json"
        except ValueError:
            body = self.body
        drop = (b"content-length", b"content-type") if media else (b"content-length",)
        headers = [(k, v) for k, v in self.start["headers"] if k.lower() not in drop]
        if media:
            headers.append((b"content-type", media))
        await self.send({**self.start, "headers": [*headers, (b"content-length", str(len(body)).encode())]})
        await self.send({"type": "http.response.body", "body": body})
