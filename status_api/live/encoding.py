"""What subscribers receive: each progress change as Server-Sent-Events bytes, encoded once.

A change is encoded (FastAPI's `format_sse_event`) when it is read, in the reader's worker
thread, and those bytes are shared by every subscriber: a stream writes a batch of them in one
write. The streams' other events are encoded once, here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from datetime import datetime

from fastapi.sse import KEEPALIVE_COMMENT, format_sse_event

from expert_pipeline.core.models import ACTIVE_STATUSES, TERMINAL_STATUSES
from status_api.schemas import ProgressRecord

TERMINAL = frozenset(s.value for s in TERMINAL_STATUSES)
ACTIVE = frozenset(s.value for s in ACTIVE_STATUSES)

# How long a disconnected EventSource waits before reconnecting (sent first on every stream).
RETRY = format_sse_event(retry=3000)
# A slow client missed events: it should re-read the list.
RESYNC = format_sse_event(
    event="resync", data_str=json.dumps({"reason": "events were dropped for a slow client"})
)
# A comment (EventSource ignores it) saying why the server ended the stream.
ENDED = format_sse_event(comment="the API token this stream was opened with is no longer accepted")
# Sent when a stream has had nothing to say for a while (proxies close idle connections).
KEEPALIVE = KEEPALIVE_COMMENT


def progress_frame(record: ProgressRecord) -> bytes:
    """`event: progress` with the record's JSON, the same object as the REST `progress`."""
    return format_sse_event(event="progress", data_str=record.model_dump_json())


@dataclass(frozen=True, slots=True)
class ProgressChange:
    """One changed progress row and its encoded event, shared by all subscribers."""

    expert_id: str
    updated_at: datetime
    status: str
    started_at: datetime
    frame: bytes
    # The expert's owner (None: no owner, or no expert row), for per-subscriber filtering.
    owner: str | None = None
    # What the event was made from, kept so a run that goes quiet can be re-sent as stalled
    # without a database read: its last sign of life, and the flag the event carries.
    record: ProgressRecord | None = None
    alive_at: datetime | None = None
    # Bumped when the same row is re-sent with a different `stalled` flag (the row itself
    # did not change, so `updated_at` alone cannot order the two events).
    revision: int = 0

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    @property
    def version(self) -> tuple[datetime, int]:
        return (self.updated_at, self.revision)

    @property
    def stalled_reason(self) -> str | None:
        return self.record.stalled_reason if self.record is not None else None

    def with_stalled(self, reason: str | None) -> ProgressChange:
        assert self.record is not None
        record = self.record.model_copy(update={"stalled": reason is not None, "stalled_reason": reason})
        return replace(self, record=record, frame=progress_frame(record), revision=self.revision + 1)


def encode_record(
    record: ProgressRecord, owner: str | None = None, alive_at: datetime | None = None
) -> ProgressChange:
    return ProgressChange(
        expert_id=record.expert_id,
        updated_at=record.updated_at,
        status=record.status,
        started_at=record.started_at,
        frame=progress_frame(record),
        owner=owner,
        record=record,
        alive_at=alive_at,
    )
