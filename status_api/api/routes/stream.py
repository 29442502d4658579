"""Live progress over Server-Sent Events.

`GET /api/experts/{expert_id}/progress/stream`
    The expert's record at once, then every change; the stream ends after a terminal status
    (completed, failed, cancelled). 404 when the expert has no progress record.
`GET /api/experts/progress/stream`
    Every active expert's record at once, then every changed record (including its final
    transition), with a keepalive comment every ~15 s.

Each frame is `event: progress` with `data:` the same JSON object as the specification's
`progress`. A client that fell behind receives `event: resync` (it may have missed a change;
re-read the list). All database reading is done by the app's one `ProgressBroadcaster`.

EventSource cannot send headers: besides `Authorization: Bearer`, both routes take a
single-use `?ticket=` from `POST /api/stream-tickets` (checked by the API's gate), never the
token itself. A stream whose token is revoked (or expires) ends within ~10 s.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.types import Receive, Scope, Send

from expert_pipeline.core import auth
from expert_pipeline.core.auth import Principal
from expert_pipeline.core.progress_service import ExpertProcessingProgressService
from status_api.api.answers import json_error, progress_not_found
from status_api.api.deps import ExpertId, StreamPrincipal, get_engine, get_stream_principal
from status_api.progress_broadcaster import (
    ProgressBroadcaster,
    ProgressChange,
    Subscription,
    encode_record,
    get_broadcaster,
)
from status_api.progress_view import present_one
from status_api.schemas import ProgressRecord

# The gate authenticates (Bearer header or `?ticket=`); the dependency picks up its answer.
router = APIRouter(prefix="/api/experts", tags=["progress stream"], dependencies=[Depends(get_stream_principal)])

RETRY_FRAME = b"retry: 3000\n\n"
KEEPALIVE_FRAME = b": keepalive\n\n"
RESYNC_FRAME = b'event: resync\ndata: {"reason": "events were dropped for a slow client"}\n\n'
# A comment (EventSource ignores it) saying why the server ended the stream.
ENDED_FRAME = b": the API token this stream was opened with is no longer accepted\n\n"
# What `_next_batch` returns when the subscription was ended (its token revoked or expired).
ENDED: list[ProgressChange] = []
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", "Connection": "keep-alive"}
# Each event as the client's EventSource sees it: `progress` with the record as JSON (the same
# object as GET /api/experts/{expert_id}/progress's `progress`), or `resync` after dropped events.
_JSON = "application/json"
STREAM_EVENT = {
    "type": "object",
    "required": ["event", "data"],
    "properties": {"event": {"enum": ["progress", "resync"]}, "data": {"type": "string"}},
    "oneOf": [
        {"properties": {
            "event": {"const": "progress"},
            "data": {"contentMediaType": _JSON, "contentSchema": {"$ref": "#/components/schemas/ProgressRecord"}},
        }},
        {"properties": {
            "event": {"const": "resync"},
            "data": {"contentMediaType": _JSON, "contentSchema": {
                "type": "object", "required": ["reason"], "properties": {"reason": {"type": "string"}},
            }},
        }},
    ],
}
STREAM_DOC = {
    200: {
        "content": {"text/event-stream": {"schema": STREAM_EVENT}},
        "description": "A Server-Sent-Events stream of `progress` events (each event's schema)",
    },
}


class EventStreamResponse(StreamingResponse):
    """A streaming response that always releases its subscription, however the stream ends
    (finished, client gone, server cancelled)."""

    media_type = "text/event-stream"

    def __init__(
        self, content: AsyncIterator[bytes], cleanup: Callable[[], None], status_code: int = 200
    ) -> None:
        super().__init__(content, status_code=status_code, headers=SSE_HEADERS)
        self._cleanup = cleanup

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._cleanup()
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                try:
                    await aclose()
                except RuntimeError:  # already running/closed
                    pass


async def _next_batch(sub: Subscription, keepalive: float) -> list[ProgressChange] | None:
    """The queued changes (waiting up to `keepalive`); None when it is time for a keepalive;
    `ENDED` (checked by identity) once the subscription has been ended."""
    if sub.ended:
        return ENDED
    try:
        async with asyncio.timeout(keepalive):
            first = await sub.queue.get()
    except TimeoutError:
        return None
    if sub.ended:
        return ENDED
    rest = sub.drain()
    return [first, *rest] if first is not None else rest


def _resync_if_lagged(sub: Subscription) -> bytes:
    if sub.lagged:
        sub.lagged = False
        return RESYNC_FRAME
    return b""


async def _expert_stream(
    broadcaster: ProgressBroadcaster, sub: Subscription, first: ProgressChange
) -> AsyncIterator[bytes]:
    cached = broadcaster.latest(first.expert_id)
    current = cached if cached is not None and cached.version > first.version else first
    yield RETRY_FRAME + current.frame
    if current.terminal:
        return
    sent = current.version
    while True:
        batch = await _next_batch(sub, broadcaster.keepalive_seconds)
        if batch is None:
            yield KEEPALIVE_FRAME
            continue
        if batch is ENDED:
            yield ENDED_FRAME
            return
        sub.lagged = False  # every frame carries the whole record: the newest one is enough
        fresh = [c for c in batch if c.version > sent]
        if not fresh:
            continue
        for index, change in enumerate(fresh):
            if change.terminal:
                yield b"".join(c.frame for c in fresh[: index + 1])
                return
        sent = fresh[-1].version
        yield b"".join(c.frame for c in fresh)


async def _all_stream(broadcaster: ProgressBroadcaster, sub: Subscription) -> AsyncIterator[bytes]:
    yield RETRY_FRAME
    snapshot = await broadcaster.snapshot(viewer=sub.viewer)
    versions = {c.expert_id: c.version for c in snapshot}
    if snapshot:
        yield b"".join(c.frame for c in snapshot)
    while True:
        batch = await _next_batch(sub, broadcaster.keepalive_seconds)
        if batch is None:
            yield KEEPALIVE_FRAME
            continue
        if batch is ENDED:
            yield ENDED_FRAME
            return
        if versions:
            # Changes queued while the snapshot was taken are already in it.
            batch = [c for c in batch if _newer(c, versions.pop(c.expert_id, None))]
        out = _resync_if_lagged(sub) + b"".join(c.frame for c in batch)
        if out:
            yield out


def _newer(change: ProgressChange, seen: Any) -> bool:
    return seen is None or change.version > seen


def _read_record(request: Request, expert_id: str, principal: Principal) -> ProgressRecord | None:
    """The record exactly as `GET /api/experts/{id}/progress` shows it (None when missing or
    not the caller's)."""
    with Session(get_engine(request)) as session:
        if not auth.can_see(session, principal, expert_id):
            return None
        service = ExpertProcessingProgressService(session)
        record = service.get_progress(expert_id)
        if record is None:
            return None
        return present_one(record, request.app.state.settings, service)


@router.get(
    "/progress/stream",
    response_class=EventStreamResponse,
    responses=STREAM_DOC,
    summary="Live progress of every active expert (Server-Sent Events)",
)
async def stream_all_progress(request: Request, principal: StreamPrincipal) -> Any:
    """Each active expert's record at once, then every change (`event: progress`), with
    keepalive comments every ~15 s; only the caller's experts (operators: all). Never ends on
    its own."""
    broadcaster = get_broadcaster(request.app)
    sub = broadcaster.subscribe(None, viewer=None if principal.operator else principal, opened_by=principal)
    return EventStreamResponse(_all_stream(broadcaster, sub), cleanup=lambda: broadcaster.unsubscribe(sub))


@router.get(
    "/{expert_id}/progress/stream",
    response_class=EventStreamResponse,
    responses={
        **STREAM_DOC,
        404: json_error("No progress record for this expert"),
    },
    summary="Live progress of one expert (Server-Sent Events)",
)
async def stream_expert_progress(expert_id: ExpertId, request: Request, principal: StreamPrincipal) -> Any:
    """The expert's record at once, then each change (`event: progress`); ends after the
    record reaches completed, failed or cancelled."""
    broadcaster = get_broadcaster(request.app)
    # Subscribe before reading, so a change between the read and the first frame is queued.
    sub = broadcaster.subscribe(expert_id, opened_by=principal)
    try:
        record = await run_in_threadpool(_read_record, request, expert_id, principal)
    except BaseException:
        broadcaster.unsubscribe(sub)
        raise
    if record is None:
        broadcaster.unsubscribe(sub)
        raise progress_not_found(expert_id)
    return EventStreamResponse(
        _expert_stream(broadcaster, sub, encode_record(record)), cleanup=lambda: broadcaster.unsubscribe(sub)
    )
