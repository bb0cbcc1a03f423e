"""One retry for a read that met a table replaced under the catalog.

A reader checks the catalog's generation, then queries. When a dataset is replaced, readers that
checked before the swap wait on its lock, and their query then runs against the new table with the
old catalog's columns: "column does not exist" (or the table is gone for a moment in between). The
error handlers of the features app invalidate the catalog on such errors (see features.py); this
wrapper then rebuilds it (unless a build that started after the failure is already in use) and
replays the request once, so the reader gets the new version instead of an error. Only GET/HEAD
requests (no body) are replayed, and only error answers are buffered.
"""

from __future__ import annotations

import logging
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from triggers.serving.catalog import CatalogKeeper

log = logging.getLogger("geoetl.serving")


class StaleCatalogRetry:
    def __init__(self, app: ASGIApp, keeper: CatalogKeeper) -> None:
        self.app = app
        self.keeper = keeper

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") not in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        original = dict(scope)
        invalidations = self.keeper.invalidations
        held: list[Message] = []
        passing = False

        async def first_send(message: Message) -> None:
            nonlocal passing
            if message["type"] == "http.response.start" and message["status"] < 400:
                passing = True
            if passing:
                await send(message)
            else:
                held.append(message)  # an error answer: kept until we know whether to retry

        await self.app(scope, receive, first_send)
        if passing:
            return
        # met a vanished table or column: the error handler invalidated the catalog while this request ran
        # (counted, not read off checked_at, which a concurrent request's check may already have reset)
        if self.keeper.invalidations != invalidations and self.keeper.generation is not None:
            try:  # a catalog read after the failure (a generation check could compare with a torn build's)
                await self.keeper.rebuild_after(self.keeper.builds_started)
            except Exception:  # no fresher catalog now: the first answer stands
                log.warning("catalog refresh before a retry failed", exc_info=True)
            else:
                await self.app(dict(original), _no_body, send)
                return
        for message in held:
            await send(message)


async def _no_body() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}
