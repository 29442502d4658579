"""Live progress over Server-Sent Events.

`GET /api/experts/{expert_id}/progress/stream`
    The expert's record at once, then every change; the stream ends after a terminal status
    (completed, failed, cancelled). 404 when the expert has no progress record.
`GET /api/experts/progress/stream`
    Every active expert's record at once, then every changed record (including its final
    transition), with a keepalive comment every ~15 s.

Each frame is `event: progress` with `data:` the same JSON object as the specification's
`progress`. A client that fell behind receives `event: resync` (it may have missed a change;
re-read the list). All database reading is done by the app's one `ProgressBroadcaster`; its
events arrive already encoded (FastAPI's `format_sse_event`, once per change for every
subscriber), and a stream writes each batch at once through FastAPI's `EventSourceResponse`.
The subscription is taken by a dependency, so a 404 is answered before the stream starts and
the subscription is released however the stream ends (finished, client gone, server stopping).

EventSource cannot send headers: besides `Authorization: Bearer`, both routes take a
single-use `?ticket=` from `POST /api/stream-tickets` (checked by the API's gate), never the
token itself. A stream whose token is revoked (or expires) ends within ~10 s.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse
from fastapi.sse import EventSourceResponse
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from expert_pipeline.core import auth
from expert_pipeline.core.auth import Principal
from expert_pipeline.core.progress_service import ExpertProcessingProgressService
from status_api.api.answers import json_error, progress_not_found
from status_api.api.deps import ExpertId, StreamPrincipal, get_engine, get_stream_principal
from status_api.live import ProgressBroadcaster, ProgressChange, Subscription, encode_record, get_broadcaster
from status_api.live.encoding import ENDED, KEEPALIVE, RESYNC, RETRY
from status_api.progress_view import present_one
from status_api.schemas import ProgressRecord

# The gate authenticates (Bearer header or `?ticket=`); the dependency picks up its answer.
router = APIRouter(
    prefix="/api/experts", tags=["progress stream"], dependencies=[Depends(get_stream_principal)]
)

# The routes return FastAPI's `EventSourceResponse` themselves rather than yield events to it:
# FastAPI's generator path encodes every event again for each stream and writes it on its own,
# where ours are encoded once for all subscribers and a batch (the snapshot) goes in one write.
# (`response_class=EventSourceResponse` would select that path, so the docs class is plain.)
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

# Each event as the client's EventSource sees it: `progress` with the record as JSON (the same
# object as GET /api/experts/{expert_id}/progress's `progress`), or `resync` after dropped events.
_JSON = "application/json"
STREAM_EVENT = {
    "type": "object",
    "required": ["event", "data"],
    "properties": {"event": {"enum": ["progress", "resync"]}, "data": {"type": "string"}},
    "oneOf": [
        {
            "properties": {
                "event": {"const": "progress"},
                "data": {
                    "contentMediaType": _JSON,
                    "contentSchema": {"$ref": "#/components/schemas/ProgressRecord"},
                },
            }
        },
        {
            "properties": {
                "event": {"const": "resync"},
                "data": {
                    "contentMediaType": _JSON,
                    "contentSchema": {
                        "type": "object",
                        "required": ["reason"],
                        "properties": {"reason": {"type": "string"}},
                    },
                },
            }
        },
    ],
}
STREAM_DOC: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {"text/event-stream": {"schema": STREAM_EVENT}},
        "description": "A Server-Sent-Events stream of `progress` events (each event's schema)",
    },
}


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


async def all_subscription(request: Request, principal: StreamPrincipal) -> AsyncIterator[Subscription]:
    """The caller's subscription to every change it may see (operators: all)."""
    broadcaster = get_broadcaster(request.app)
    sub = broadcaster.subscribe(None, viewer=None if principal.operator else principal, opened_by=principal)
    try:
        yield sub
    finally:
        broadcaster.unsubscribe(sub)


async def expert_subscription(
    expert_id: ExpertId, request: Request, principal: StreamPrincipal
) -> AsyncIterator[tuple[Subscription, ProgressChange]]:
    """The subscription to one expert's changes and its record now; 404 before any stream."""
    broadcaster = get_broadcaster(request.app)
    # Subscribe before reading, so a change between the read and the first event is queued.
    sub = broadcaster.subscribe(expert_id, opened_by=principal)
    try:
        record = await run_in_threadpool(_read_record, request, expert_id, principal)
        if record is None:
            raise progress_not_found(expert_id)
        yield sub, encode_record(record)
    finally:
        broadcaster.unsubscribe(sub)


async def _all_stream(broadcaster: ProgressBroadcaster, sub: Subscription) -> AsyncIterator[bytes]:
    yield RETRY
    snapshot = await broadcaster.snapshot(viewer=sub.viewer)
    versions = {c.expert_id: c.version for c in snapshot}
    if snapshot:
        yield b"".join(c.frame for c in snapshot)
    while (batch := await sub.next_batch(broadcaster.keepalive_seconds)) is not None:
        if not batch:
            yield KEEPALIVE
            continue
        if versions:
            # Changes queued while the snapshot was taken are already in it.
            batch = [c for c in batch if _newer(c, versions.pop(c.expert_id, None))]
        out = b"".join(c.frame for c in batch)
        if sub.lagged:
            sub.lagged = False
            out = RESYNC + out
        if out:
            yield out
    yield ENDED


async def _expert_stream(
    broadcaster: ProgressBroadcaster, sub: Subscription, first: ProgressChange
) -> AsyncIterator[bytes]:
    cached = broadcaster.latest(first.expert_id)
    current = cached if cached is not None and cached.version > first.version else first
    yield RETRY + current.frame
    if current.terminal:
        return
    sent = current.version
    while (batch := await sub.next_batch(broadcaster.keepalive_seconds)) is not None:
        if not batch:
            yield KEEPALIVE
            continue
        sub.lagged = False  # every event carries the whole record: the newest one is enough
        fresh = []
        for change in batch:
            if change.version > sent:
                sent = change.version
                fresh.append(change.frame)
                if change.terminal:
                    yield b"".join(fresh)
                    return
        if fresh:
            yield b"".join(fresh)
    yield ENDED


def _newer(change: ProgressChange, seen: tuple[datetime, int] | None) -> bool:
    return seen is None or change.version > seen


@router.get(
    "/progress/stream",
    response_class=StreamingResponse,
    responses=STREAM_DOC,
    summary="Live progress of every active expert (Server-Sent Events)",
)
async def stream_all_progress(
    request: Request, sub: Annotated[Subscription, Depends(all_subscription)]
) -> EventSourceResponse:
    """Each active expert's record at once, then every change (`event: progress`), with
    keepalive comments every ~15 s; only the caller's experts (operators: all). Never ends on
    its own."""
    return EventSourceResponse(_all_stream(get_broadcaster(request.app), sub), headers=SSE_HEADERS)


@router.get(
    "/{expert_id}/progress/stream",
    response_class=StreamingResponse,
    responses={
        **STREAM_DOC,
        404: json_error("No progress record for this expert"),
    },
    summary="Live progress of one expert (Server-Sent Events)",
)
async def stream_expert_progress(
    expert_id: ExpertId,
    request: Request,
    opened: Annotated[tuple[Subscription, ProgressChange], Depends(expert_subscription)],
) -> EventSourceResponse:
    """The expert's record at once, then each change (`event: progress`); ends after the
    record reaches completed, failed or cancelled."""
    sub, first = opened
    return EventSourceResponse(_expert_stream(get_broadcaster(request.app), sub, first), headers=SSE_HEADERS)
