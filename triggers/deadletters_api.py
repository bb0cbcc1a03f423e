"""Dead letters: GET /api/queues/{queue}/deadletters (paged, with the reason) and POST .../replay (write key)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field, StringConstraints, ValidationError, field_validator

from config import get_settings
from infrastructure.queues import get_queue
from triggers.auth import require_read_key, require_write_key
from triggers.errors import ApiError

router = APIRouter(tags=["queues"])
MAX_REPLAY = 1000


class ReplayRequest(BaseModel):
    """Replay these message ids, or (without ids) the oldest `limit` dead letters."""

    message_ids: list[Annotated[str, StringConstraints(min_length=1, max_length=500)]] | None = Field(
        None, max_length=MAX_REPLAY
    )
    limit: int = Field(100, ge=1, le=MAX_REPLAY)

    @field_validator("message_ids")
    @classmethod
    def _storable(cls, ids: list[str] | None) -> list[str] | None:
        """PostgreSQL text holds no NUL and no unpaired surrogate: such an id names no message."""
        for mid in ids or []:
            if "\x00" in mid or any(0xD800 <= ord(c) <= 0xDFFF for c in mid):
                raise ValueError("a message id holds a NUL character or an unpaired surrogate")
        return ids


def _known_queue(queue: str) -> str:
    s = get_settings()
    known = [s.jobs_queue, s.tasks_queue]
    if queue not in known:
        raise ApiError(404, "unknown_queue", f"no queue named '{queue[:100]}'; the queues are {', '.join(known)}")
    return queue


@router.get(
    "/queues/{queue}/deadletters",
    summary="Dead-lettered messages of a queue, oldest first, with the reason",
    dependencies=[Depends(require_read_key)],
)
async def list_dead_letters(
    queue: str,
    limit: int = Query(50, ge=1, le=500),
    after: str | None = Query(None, pattern=r"^[0-9]{1,18}$", description="next_cursor of the previous page"),
) -> dict[str, Any]:
    _known_queue(queue)
    page = await run_in_threadpool(get_queue().dead_letters, queue, limit, after)
    return {
        "queue": queue,
        "total": page.total,
        "limit": limit,
        "next_cursor": page.next_cursor,
        "messages": [asdict(m) for m in page.messages],
    }


@router.post(
    "/queues/{queue}/deadletters/replay",
    summary="Send dead-lettered messages to their queue again",
    dependencies=[Depends(require_write_key)],
)
async def replay_dead_letters(queue: str, request: Request) -> dict[str, Any]:
    _known_queue(queue)
    raw = await request.body()
    try:
        body = ReplayRequest.model_validate_json(raw) if raw.strip() else ReplayRequest()
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise ApiError(400, "invalid_request", f"{where}: {first['msg']}") from None
    replayed = await run_in_threadpool(get_queue().replay_dead_letters, queue, body.message_ids, body.limit)
    return {"queue": queue, "replayed": len(replayed), "message_ids": replayed}
