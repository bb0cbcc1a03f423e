"""Replays for a read that met a table replaced under the catalog.

A reader checks the catalog's generation, then queries. When a dataset is replaced, readers that
checked before the swap wait on its lock, and their query then runs against the new table with the
old catalog's columns: "column does not exist" (or the table is gone for a moment in between). The
error handlers of the features app invalidate the catalog on such errors (see features.py); this
wrapper then rebuilds it (unless a build that started after the failure is already in use) and
replays the request (at most MAX_REPLAYS times), so the reader gets the new version instead of an
error. Only GET/HEAD requests (no body) are replayed, and only error answers are buffered.
"""

from __future__ import annotations

import logging
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from triggers.serving.catalog import CatalogKeeper

log = logging.getLogger("geoetl.serving")

# A replay meets the same error again only if yet another version committed in between, or the rebuild
# read the database in the instant before the commit it met became visible; a second replay reads after it.
MAX_REPLAYS = 2


class StaleCatalogRetry:
    def __init__(self, app: ASGIApp, keeper: CatalogKeeper) -> None:
        self.app = app
        self.keeper = keeper

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") not in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        original = dict(scope)
        for replay in range(MAX_REPLAYS + 1):
            invalidations = self.keeper.invalidations
            passed, held = await self._attempt(scope if replay == 0 else dict(original),
                                               receive if replay == 0 else _no_body, send)
            if passed:
                return
            # met a vanished table or column: the error handler invalidated the catalog while this request ran
            # (counted, not read off checked_at, which a concurrent request's check may already have reset)
            if replay == MAX_REPLAYS or self.keeper.invalidations == invalidations or self.keeper.generation is None:
                break
            log.info(
                "%s met a table or column the catalog no longer matches: catalog rebuilt, request replayed"
                " (replay %d; build %d of %d in use)",
                scope.get("path"), replay + 1, self.keeper.published_build, self.keeper.builds_started,
            )
            try:  # a catalog read after the failure (a generation check could compare with a torn build's)
                await self.keeper.rebuild_after(self.keeper.builds_started)
            except Exception:  # no fresher catalog now: the first answer stands
                log.warning("catalog refresh before a retry failed", exc_info=True)
                break
        for message in held:
            await send(message)

    async def _attempt(self, scope: Scope, receive: Receive, send: Send) -> tuple[bool, list[Message]]:
        """Run the request; a success streams through, an error answer is held: (passed, held messages)."""
        held: list[Message] = []
        passing = False

        async def hold_errors(message: Message) -> None:
            nonlocal passing
            if message["type"] == "http.response.start" and message["status"] < 400:
                passing = True
            if passing:
                await send(message)
            else:
                held.append(message)

        await self.app(scope, receive, hold_errors)
        return passing, held


async def _no_body() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}
