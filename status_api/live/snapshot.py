"""The polled progress answers, kept in memory from the broadcaster's tick.

`GET /api/experts/{id}/progress` and `GET /api/experts/progress/active` are what dashboards
poll. The broadcaster already reads the database once per tick for every live stream; this
keeps, from the same reads, each expert's answer as the bytes the FastAPI route would send:
the record presented by `present()` (in the reader), with what is derived at read time worked
out again every tick (queue places of the pending experts, stall flags and their words), so
nothing served is older than the last read.

What is held: every active expert (the first read takes them all), and the other experts asked
for lately (a miss names one; it is read by id from the next tick on, at most
`max_inactive`, dropped after `idle_seconds` unasked). Every tick reads all of them by id in
the tick's one query, so a row deleted or beating (a heartbeat does not move `updated_at`) or
re-owned is seen at once; unchanged rows are not presented again.

Used on the event loop only.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from expert_pipeline.core.auth import Principal
from expert_pipeline.core.models import Status, utcnow
from expert_pipeline.core.pipeline_health import PipelineState, stall_reason
from expert_pipeline.core.settings import Settings
from status_api.live import local_writes
from status_api.live.encoding import ACTIVE, ProgressChange
from status_api.schemas import ProgressRecord

# What a read of a row is compared by: a row equal on these is not presented again.
Seen = tuple[datetime, datetime | None, str | None]

_ONE_HEAD = b'{"success":true,"progress":'
_ACTIVE_HEAD = b'{"success":true,"count":%d,"progress_records":['


def seen_of(updated_at: datetime, heartbeat_at: datetime | None, owner: str | None) -> Seen:
    return (updated_at, heartbeat_at, owner)


@dataclass(slots=True)
class Entry:
    """One expert as of the last read: `record` None when it has no progress row."""

    owner: str | None
    record: ProgressRecord | None
    seen: Seen | None
    fragment: bytes = b""  # the record's JSON
    body: bytes = b""  # the whole 200 answer of GET /api/experts/{id}/progress
    asked_at: float = 0.0  # time.monotonic() of the last request for it

    @property
    def active(self) -> bool:
        return self.record is not None and self.record.status in ACTIVE


def _encode(entry: Entry) -> None:
    assert entry.record is not None
    entry.fragment = entry.record.model_dump_json().encode()
    entry.body = _ONE_HEAD + entry.fragment + b"}"


class ProgressSnapshot:
    def __init__(
        self,
        settings: Settings,
        *,
        fresh_seconds: float = 0.3,
        idle_seconds: float = 60.0,
        max_inactive: int = 500,
    ) -> None:
        self.settings = settings
        self.fresh_seconds = fresh_seconds
        self.idle_seconds = idle_seconds
        self.max_inactive = max_inactive
        self._entries: dict[str, Entry] = {}
        self._wanted: set[str] = set()
        self._active: list[Entry] = []  # oldest first, as the route lists them
        self._active_bodies: dict[str | None, bytes] = {}
        # time.monotonic() when the read the entries come from started (None: no read yet).
        self.read_started: float | None = None

    def reset(self) -> None:
        self._entries.clear()
        self._wanted.clear()
        self._active = []
        self._active_bodies.clear()
        self.read_started = None

    # -- answering -------------------------------------------------------------------------

    def usable(self) -> bool:
        """Whether memory may answer: read less than `fresh_seconds` ago, and after this
        process's last write of progress (which the next read picks up)."""
        started = self.read_started
        return (
            started is not None
            and time.monotonic() - started <= self.fresh_seconds
            and started > local_writes.written_at(local_writes.PROGRESS)
        )

    def entry(self, expert_id: str) -> Entry | None:
        """The expert's entry (call `usable()` first); None: not held, `want` it."""
        entry = self._entries.get(expert_id)
        if entry is not None:
            entry.asked_at = time.monotonic()
        return entry

    def want(self, expert_id: str) -> None:
        """Read this expert from the next tick on (a miss)."""
        if len(self._wanted) < self.max_inactive:
            self._wanted.add(expert_id)

    def active_body(self, viewer: Principal) -> bytes:
        """The whole 200 answer of GET /api/experts/progress/active for this viewer."""
        key = None if viewer.operator else viewer.owner
        body = self._active_bodies.get(key)
        if body is None:
            mine = [e.fragment for e in self._active if viewer.sees(e.owner)]
            body = _ACTIVE_HEAD % len(mine) + b",".join(mine) + b"]}"
            self._active_bodies[key] = body
        return body

    # -- the tick's read -------------------------------------------------------------------

    def ids_to_read(self) -> list[str]:
        """Read by id every tick: what is held, and what was asked for."""
        return sorted(self._entries.keys() | self._wanted)

    def seen(self) -> dict[str, Seen]:
        return {k: e.seen for k, e in self._entries.items() if e.seen is not None}

    def apply(
        self,
        changes: Iterable[ProgressChange],
        asked: Iterable[str],
        returned: set[str],
        started: float,
        pipeline: PipelineState | None,
    ) -> None:
        """A successful read that started at `started`: `changes` are its presented rows,
        `returned` every expert it returned (presented or not), `asked` those read by id."""
        for change in changes:
            record = change.record
            if record is None:
                continue
            entry = self._entries.get(change.expert_id)
            if entry is None and not change.active and change.expert_id not in self._wanted:
                continue  # not held and nobody asked: the streams' business only
            seen = seen_of(record.updated_at, record.heartbeat_at, change.owner)
            if entry is None:
                self._entries[change.expert_id] = entry = Entry(change.owner, record, seen)
            else:
                entry.owner, entry.record, entry.seen = change.owner, record, seen
            _encode(entry)
        for expert_id in asked:
            if expert_id not in returned:  # no progress row (deleted, or never was)
                entry = self._entries.get(expert_id)
                if entry is None:
                    self._entries[expert_id] = Entry(None, None, None)
                elif entry.record is not None:
                    entry.owner, entry.record, entry.seen = None, None, None
        read = self._wanted.intersection(asked)  # asked for while this read was under way: the next
        for expert_id in read:
            self._entries[expert_id].asked_at = time.monotonic()
        self._wanted -= read
        self._derive(pipeline)
        self._evict()
        self.read_started = started

    def _derive(self, pipeline: PipelineState | None) -> None:
        """What the route works out at read time, worked out again for this tick."""
        now = utcnow()
        active = sorted(
            (e for e in self._entries.values() if e.active),
            key=lambda e: (e.record.started_at, e.record.expert_id),  # type: ignore[union-attr]
        )
        queue = 0
        for entry in active:
            record = entry.record
            assert record is not None
            position = None
            if record.status == Status.PENDING:
                queue += 1
                position = queue
            reason = stall_reason(record, now, self.settings.stall_after_seconds, pipeline)
            if (position, reason) != (record.queue_position, record.stalled_reason):
                entry.record = record.model_copy(
                    update={
                        "queue_position": position,
                        "stalled": reason is not None,
                        "stalled_reason": reason,
                    }
                )
                _encode(entry)
        self._active = active
        self._active_bodies.clear()

    def _evict(self) -> None:
        now = time.monotonic()
        idle = [k for k, e in self._entries.items() if not e.active and now - e.asked_at > self.idle_seconds]
        for key in idle:
            del self._entries[key]
        inactive = [(e.asked_at, k) for k, e in self._entries.items() if not e.active]
        for _, key in sorted(inactive)[: max(0, len(inactive) - self.max_inactive)]:
            del self._entries[key]
