"""Live progress for many listeners from one database read per tick.

One `ProgressBroadcaster` lives on each app (`app.state.progress_broadcaster`). The first
subscriber starts a single background poller task; the last one to leave stops it. Each tick
the poller runs ONE query for the progress rows whose `updated_at` moved, turns every changed
row into a ready-to-send Server-Sent-Events frame once, and fans the frame out to the
subscribers' bounded queues. However many browsers watch, the database sees the same reads.

Finding changes
    Rows are read with `updated_at > since`, where `since` is the start of the previous
    successful read minus a small look-back window (`lookback_seconds`). The look-back covers
    writes that commit a little after the timestamp they carry (the service stamps
    `updated_at` before it commits) and small clock differences between writers; rows read
    twice are recognised by their `updated_at` and sent once. A row is therefore missed only if
    its writer commits more than `lookback_seconds` after stamping it.

PostgreSQL: LISTEN/NOTIFY
    Migration 0002 adds a trigger that runs `pg_notify('expert_progress', expert_id)` for
    every insert/update of the progress table, whoever writes it (the status API, a Dagster
    run worker in another process, a psql session). While it has subscribers, the poller holds
    one extra connection that LISTENs on that channel; a notification wakes it immediately
    instead of at the next tick, and the notified expert ids are read by id as well as by time
    (still in the same single query), which closes the late-commit/clock-skew gap above.
    Bursts are coalesced: reads never run closer together than `min_read_gap_seconds`.

Slow clients
    Every subscriber has a bounded queue. When it is full the oldest frame is dropped and the
    subscriber is marked `lagged`; the stream then tells the client to resynchronise (an
    `event: resync` frame), since it may have missed a transition.

Revoked tokens
    Every `token_recheck_seconds` (10 s) the poller asks, in one query, whether the tokens the
    open streams were authenticated with are still accepted; a stream whose token was revoked
    or has expired (or opened in local mode, once a token exists) is ended.

Blocking database calls run in worker threads (`asyncio.to_thread`), never on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, Select, or_, select
from sqlalchemy.orm import Session

from expert_pipeline.core.auth import Principal, any_tokens, valid_token_ids
from expert_pipeline.core.models import (
    ACTIVE_STATUSES,
    TERMINAL_STATUSES,
    Expert,
    ExpertProcessingProgress,
    Status,
    utcnow,
)
from expert_pipeline.core.pipeline_health import PipelineState, read_state, stall_reason
from expert_pipeline.core.settings import Settings, get_settings
from status_api.progress_view import present
from status_api.schemas import ProgressRecord

log = logging.getLogger(__name__)

NOTIFY_CHANNEL = "expert_progress"
TERMINAL = frozenset(s.value for s in TERMINAL_STATUSES)
ACTIVE = frozenset(s.value for s in ACTIVE_STATUSES)

# Notified ids read by id in one tick; beyond this the time window alone is used for that tick.
MAX_IDS_PER_READ = 500



@dataclass(frozen=True, slots=True)
class ProgressChange:
    """One changed progress row, already encoded as an SSE frame (shared by all subscribers)."""

    expert_id: str
    updated_at: datetime
    status: str
    started_at: datetime
    frame: bytes
    # The expert's owner (None: no owner, or no expert row), for per-subscriber filtering.
    owner: str | None = None
    # What the frame was made from, kept so a run that goes quiet can be re-sent as stalled
    # without a database read: its last sign of life, and the flag the frame carries.
    record: ProgressRecord | None = None
    alive_at: datetime | None = None
    # Bumped when the same row is re-sent with a different `stalled` flag (the row itself
    # did not change, so `updated_at` alone cannot order the two frames).
    revision: int = 0

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    @property
    def version(self) -> tuple[datetime, int]:
        return (self.updated_at, self.revision)

    @property
    def stalled_reason(self) -> str | None:
        return self.record.stalled_reason if self.record is not None else None

    def with_stalled(self, reason: str | None) -> ProgressChange:
        assert self.record is not None
        record = self.record.model_copy(update={"stalled": reason is not None, "stalled_reason": reason})
        return replace(
            self, record=record, frame=sse_frame("progress", record.model_dump_json()), revision=self.revision + 1
        )


@dataclass(frozen=True)
class _Liveness:
    """What `stall_reason` reads of a row, from what a change already knows."""

    status: str
    started_at: datetime
    updated_at: datetime
    heartbeat_at: datetime | None


def _alive_at(row: Any) -> datetime | None:
    """The last sign of life stall flips are worked out from: a run's heartbeat, or for a
    pending expert when it was queued."""
    if row.status == Status.IN_PROGRESS:
        return row.heartbeat_at or row.updated_at  # type: ignore[no-any-return]
    if row.status == Status.PENDING:
        return row.started_at  # type: ignore[no-any-return]
    return None


def sse_frame(event: str, data: str) -> bytes:
    lines = "".join(f"data: {line}\n" for line in data.splitlines() or [""])
    return f"event: {event}\n{lines}\n".encode()


def encode_record(
    record: ProgressRecord, owner: str | None = None, alive_at: datetime | None = None
) -> ProgressChange:
    return ProgressChange(
        expert_id=record.expert_id,
        updated_at=record.updated_at,
        status=record.status,
        started_at=record.started_at,
        frame=sse_frame("progress", record.model_dump_json()),
        owner=owner,
        record=record,
        alive_at=alive_at,
    )


@dataclass(eq=False)
class Subscription:
    """A listener: all changes (`expert_id is None`) or one expert's. An "all" listener with a
    `viewer` only receives the experts that viewer may see (`Principal.sees` on the owner
    carried by each change, read with the tick's one query)."""

    expert_id: str | None
    queue: asyncio.Queue[ProgressChange | None]
    lagged: bool = False
    dropped: int = 0
    viewer: Principal | None = None
    # Who opened it: their token (re-checked while it is open), or local mode (token_id None).
    token_id: str | None = None
    local: bool = False
    # Set when its token is no longer accepted; the stream then ends.
    ended: bool = False

    def wants(self, change: ProgressChange) -> bool:
        return self.viewer is None or self.viewer.sees(change.owner)

    def offer(self, change: ProgressChange) -> bool:
        """Queue without waiting; drop the oldest frame when full. True if one was dropped."""
        dropped = False
        if self.queue.full():
            with contextlib.suppress(asyncio.QueueEmpty):
                self.queue.get_nowait()
            self.lagged = True
            self.dropped += 1
            dropped = True
        self.queue.put_nowait(change)
        return dropped

    def drain(self) -> list[ProgressChange]:
        items: list[ProgressChange] = []
        while True:
            try:
                item = self.queue.get_nowait()
            except asyncio.QueueEmpty:
                return items
            if item is not None:
                items.append(item)

    def end(self) -> None:
        """Mark it ended and wake its stream (a None in the queue) so it stops at once."""
        self.ended = True
        if self.queue.full():
            with contextlib.suppress(asyncio.QueueEmpty):
                self.queue.get_nowait()
        self.queue.put_nowait(None)


@dataclass
class BroadcasterStats:
    """Counters for tests, benchmarks and operators (no endpoint exposes them)."""

    ticks: int = 0
    reads: int = 0
    read_errors: int = 0
    rows_read: int = 0
    changes: int = 0
    frames_queued: int = 0
    frames_dropped: int = 0
    notifications: int = 0
    pollers_started: int = 0
    listening: bool = False
    subscribers: int = 0
    last_read_seconds: float = 0.0

    def snapshot(self) -> dict[str, Any]:
        return dict(self.__dict__)


class ProgressBroadcaster:
    def __init__(
        self,
        engine: Engine,
        settings: Settings | None = None,
        *,
        tick_seconds: float = 0.15,
        lookback_seconds: float = 2.0,
        min_read_gap_seconds: float = 0.02,
        queue_size: int = 256,
        keepalive_seconds: float = 15.0,
        reseed_seconds: float = 30.0,
        use_listen: bool = True,
        token_recheck_seconds: float = 10.0,
    ) -> None:
        self.engine = engine
        self.settings = settings or get_settings()
        self.tick_seconds = tick_seconds
        self.lookback_seconds = lookback_seconds
        self.min_read_gap_seconds = min_read_gap_seconds
        self.queue_size = queue_size
        self.keepalive_seconds = keepalive_seconds
        self.reseed_seconds = reseed_seconds
        self.use_listen = use_listen and engine.dialect.name == "postgresql"
        self.token_recheck_seconds = token_recheck_seconds
        self._recheck_at = 0.0
        self._pipeline: PipelineState | None = None
        self._pipeline_read_at = 0.0
        self.stats = BroadcasterStats()

        self._all: set[Subscription] = set()
        self._by_expert: dict[str, set[Subscription]] = {}
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._seeded: asyncio.Event | None = None
        self._since: datetime | None = None
        # The newest version sent per expert (dedupes rows read again inside the look-back).
        self._versions: dict[str, tuple[datetime, int]] = {}
        # The newest frame of every active expert: the snapshot a new "all" subscriber gets.
        self._active: dict[str, ProgressChange] = {}
        self._notified: set[str] = set()
        self._listen_conn: Any = None
        self._listen_fd: int | None = None
        self._listen_retry_at = 0.0
        self._reseed_at = 0.0

    # -- subscribing -------------------------------------------------------------------------

    @property
    def subscriber_count(self) -> int:
        return len(self._all) + sum(len(s) for s in self._by_expert.values())

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def subscribe(
        self, expert_id: str | None = None, viewer: Principal | None = None, opened_by: Principal | None = None
    ) -> Subscription:
        """Register a listener and make sure the poller runs. Call on the event loop.
        `viewer` limits an "all" listener to the experts that principal may see; `opened_by`
        (the caller) is re-checked while it listens (its token revoked: the stream ends)."""
        sub = Subscription(expert_id=expert_id, queue=asyncio.Queue(maxsize=self.queue_size), viewer=viewer)
        if opened_by is not None:
            sub.token_id = opened_by.token_id
            sub.local = opened_by.token_id is None
        if expert_id is None:
            self._all.add(sub)
        else:
            self._by_expert.setdefault(expert_id, set()).add(sub)
        self.stats.subscribers = self.subscriber_count
        self._ensure_running()
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        if sub.expert_id is None:
            self._all.discard(sub)
        else:
            subs = self._by_expert.get(sub.expert_id)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._by_expert[sub.expert_id]
        self.stats.subscribers = self.subscriber_count
        if not self.subscriber_count and self._wake is not None:
            self._wake.set()  # let the poller notice at once and stop

    async def snapshot(self, timeout: float = 10.0, viewer: Principal | None = None) -> list[ProgressChange]:
        """The newest state of every active expert the viewer may see (waits for the poller's
        first read)."""
        self._ensure_running()
        assert self._seeded is not None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._seeded.wait()
        return [c for c in self._active.values() if viewer is None or viewer.sees(c.owner)]

    def latest(self, expert_id: str) -> ProgressChange | None:
        return self._active.get(expert_id)

    def _ensure_running(self) -> None:
        if self.running:
            return
        self._wake = asyncio.Event()
        self._seeded = asyncio.Event()
        self._since = None
        self._versions.clear()
        self._active.clear()
        self._notified.clear()
        self.stats.pollers_started += 1
        self._recheck_at = time.monotonic() + self.token_recheck_seconds  # just authenticated
        self._task = asyncio.get_running_loop().create_task(self._run(), name="progress-broadcaster")

    async def aclose(self) -> None:
        """Stop the poller and drop every subscriber (app shutdown)."""
        self._all.clear()
        self._by_expert.clear()
        self.stats.subscribers = 0
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self._stop_listening()

    # -- the poller --------------------------------------------------------------------------

    async def _run(self) -> None:
        assert self._wake is not None and self._seeded is not None
        last_read = 0.0
        try:
            while self.subscriber_count:
                if self.use_listen and self._listen_conn is None and time.monotonic() >= self._listen_retry_at:
                    await self._start_listening()
                if self._seeded.is_set():
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self.tick_seconds):
                            await self._wake.wait()
                self._wake.clear()
                if not self.subscriber_count:
                    break
                gap = self.min_read_gap_seconds - (time.monotonic() - last_read)
                if gap > 0:
                    await asyncio.sleep(gap)
                last_read = time.monotonic()
                await self._tick()
                if time.monotonic() >= self._recheck_at:
                    self._recheck_at = time.monotonic() + self.token_recheck_seconds
                    await self._recheck_tokens()
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - never leave subscribers with a dead poller silently
            log.exception("progress broadcaster stopped unexpectedly")
        finally:
            # Synchronously (no await) before a new poller can start: give up the listener.
            conn = self._drop_listener()
            if self._task is asyncio.current_task():
                self._task = None
            await self._close(conn)

    async def _tick(self) -> None:
        ids, self._notified = self._notified, set()
        if len(ids) > MAX_IDS_PER_READ:
            ids = set()
        seeding = not self._seeded.is_set()  # type: ignore[union-attr]
        # Now and then the active set is read whole again, so an expert deleted while active
        # leaves the snapshot (still this tick's one query).
        reseeding = seeding or time.monotonic() >= self._reseed_at
        started = datetime.now(UTC)
        since = self._since or (started - timedelta(seconds=self.lookback_seconds))
        t0 = time.perf_counter()
        try:
            pending = {} if reseeding else {
                c.expert_id: c.started_at for c in self._active.values() if c.status == Status.PENDING
            }
            records = await asyncio.to_thread(self._read, since, sorted(ids), reseeding, pending)
        except Exception as exc:  # noqa: BLE001 - a database outage: keep subscribers, retry
            self.stats.read_errors += 1
            self._notified |= ids
            if self.stats.read_errors in (1, 10) or self.stats.read_errors % 100 == 0:
                log.warning("progress broadcaster cannot read the database: %s", exc)
            await asyncio.sleep(min(2.0, self.tick_seconds * 5))
            return
        self.stats.last_read_seconds = time.perf_counter() - t0
        self.stats.reads += 1
        self.stats.ticks += 1
        self.stats.rows_read += len(records)
        # The next read looks back from when this one started (commit lag, clock skew).
        self._since = started - timedelta(seconds=self.lookback_seconds)
        # The first read after start is the baseline: "all" subscribers get it as their
        # snapshot (active experts only), not as a burst of old changes. One-expert subscribers
        # still get it (they drop versions they already have).
        self._publish(records, to_all=not seeding)
        if reseeding:
            # Entries already known stay (they carry what was last sent, e.g. a stalled flag);
            # experts no longer active, or deleted, leave.
            self._active = {c.expert_id: self._active.get(c.expert_id, c) for c in records if c.status in ACTIVE}
            self._reseed_at = time.monotonic() + self.reseed_seconds
        if seeding:
            self._seeded.set()  # type: ignore[union-attr]
        self._push_stall_flips()
        self._prune(self._since)

    async def _recheck_tokens(self) -> None:
        """End the streams whose token is no longer accepted (one query for all of them)."""
        subs = [*self._all, *(s for group in self._by_expert.values() for s in group)]
        token_ids = {s.token_id for s in subs if s.token_id is not None}
        local = any(s.local for s in subs)
        if not token_ids and not local:
            return
        try:
            valid, tokens_exist = await asyncio.to_thread(self._read_tokens, token_ids, local)
        except Exception as exc:  # noqa: BLE001 - a database outage is no reason to cut streams
            log.warning("cannot re-check the streams' API tokens: %s", exc)
            return
        for sub in subs:
            if (sub.token_id is not None and sub.token_id not in valid) or (sub.local and tokens_exist):
                sub.end()

    def _read_tokens(self, token_ids: set[str], local: bool) -> tuple[set[str], bool]:
        with Session(self.engine) as session:
            return valid_token_ids(session, token_ids), local and any_tokens(session)

    def _query(self, since: datetime, ids: list[str], seeding: bool) -> Select[Any]:
        table = ExpertProcessingProgress.__table__
        conditions = [table.c.updated_at > since]
        if ids:
            conditions.append(table.c.expert_id.in_(ids))
        if seeding:
            conditions.append(table.c.status.in_(sorted(ACTIVE)))
        experts = Expert.__table__
        return (
            select(table, experts.c.owner.label("expert_owner"))
            .select_from(table.outerjoin(experts, experts.c.id == table.c.expert_id))
            .where(or_(*conditions))
            .order_by(table.c.updated_at)
        )

    def _read(
        self, since: datetime, ids: list[str], seeding: bool, pending: dict[str, datetime]
    ) -> list[ProgressChange]:
        """The tick's single query (runs in a worker thread). Rows are presented exactly as
        `GET /api/experts/{id}/progress` presents them, and encoded once, off the loop."""
        with Session(self.engine) as session:
            rows = session.execute(self._query(since, ids, seeding)).all()
        # Queue positions from the known pending experts, as changed by this read.
        for row in rows:
            if row.status == Status.PENDING:
                pending[row.expert_id] = row.started_at
            else:
                pending.pop(row.expert_id, None)
        order = sorted(pending.items(), key=lambda item: (item[1], item[0]))
        queue = {expert_id: position for position, (expert_id, _) in enumerate(order, 1)}
        if pending and time.monotonic() - self._pipeline_read_at > 2.0:
            # Whether anything will pick the pending experts up: one small read, now and then.
            with Session(self.engine) as session:
                self._pipeline = read_state(session)
            self._pipeline_read_at = time.monotonic()
        now = utcnow()
        return [
            encode_record(
                present(row, self.settings, queue, now, self._pipeline),  # type: ignore[arg-type]
                owner=row.expert_owner,
                alive_at=_alive_at(row),
            )
            for row in rows
        ]

    def _publish(self, changes: Iterable[ProgressChange], *, to_all: bool = True) -> None:
        """Fan out on the event loop: cache update and queueing happen without an await."""
        for change in changes:
            sent = self._versions.get(change.expert_id)
            if sent is not None and change.updated_at <= sent[0]:
                self._refresh_liveness(change)
                continue
            self._versions[change.expert_id] = change.version
            if change.status in ACTIVE:
                self._active[change.expert_id] = change
            else:
                self._active.pop(change.expert_id, None)
            self.stats.changes += 1
            self._fan_out(change, to_all=to_all)

    def _fan_out(self, change: ProgressChange, *, to_all: bool = True) -> None:
        for sub in (*(self._all if to_all else ()), *self._by_expert.get(change.expert_id, ())):
            if not sub.wants(change):
                continue
            if sub.offer(change):
                self.stats.frames_dropped += 1
            self.stats.frames_queued += 1

    def _resend(self, change: ProgressChange) -> None:
        self._active[change.expert_id] = change
        self._versions[change.expert_id] = change.version
        self._fan_out(change)

    def _refresh_liveness(self, change: ProgressChange) -> None:
        """A re-read of an unchanged row (the periodic reseed) carries its newest heartbeat, so a
        run shown as stalled that beats again is seen to be alive."""
        current = self._active.get(change.expert_id)
        if current is None or change.alive_at is None or current.updated_at != change.updated_at:
            return
        if current.alive_at is None or change.alive_at > current.alive_at:
            # _push_stall_flips, later in the same tick, re-sends it if the flag changes.
            self._active[change.expert_id] = replace(current, alive_at=change.alive_at)

    def _push_stall_flips(self) -> None:
        """A heartbeat does not touch `updated_at`, so a run going quiet produces no change to
        read; the flag is worked out here from the last sign of life already known."""
        now = utcnow()
        for change in list(self._active.values()):
            if change.alive_at is None or change.record is None:
                continue
            liveness = _Liveness(change.status, change.started_at, change.alive_at, change.alive_at)
            reason = stall_reason(liveness, now, self.settings.stall_after_seconds, self._pipeline)
            if reason != change.stalled_reason:
                self._resend(change.with_stalled(reason))

    def _prune(self, since: datetime) -> None:
        # A version older than the window can never be read again by time; drop it unless it
        # is an active expert (whose entry also guards the snapshot).
        stale = [k for k, v in self._versions.items() if v[0] <= since and k not in self._active]
        for key in stale:
            del self._versions[key]

    # -- PostgreSQL LISTEN -------------------------------------------------------------------

    async def _start_listening(self) -> None:
        try:
            conn = await asyncio.to_thread(self._listen_connection)
        except Exception as exc:  # noqa: BLE001 - polling still works; retry later
            self._listen_retry_at = time.monotonic() + 5.0
            log.warning("LISTEN %s unavailable, polling only: %s", NOTIFY_CHANNEL, exc)
            return
        loop = asyncio.get_running_loop()
        self._listen_conn = conn
        self._listen_fd = conn.fileno()
        loop.add_reader(self._listen_fd, self._on_notify)
        self.stats.listening = True

    def _listen_connection(self) -> Any:
        raw = self.engine.raw_connection()
        conn = raw.driver_connection
        raw.detach()  # ours alone, never returned to the pool
        conn.rollback()
        conn.autocommit = True
        with conn.cursor() as cursor:
            cursor.execute(f"LISTEN {NOTIFY_CHANNEL}")
        return conn

    def _on_notify(self) -> None:
        conn = self._listen_conn
        if conn is None:
            return
        try:
            conn.poll()
        except Exception as exc:  # noqa: BLE001 - connection lost: drop it, reconnect later
            log.warning("LISTEN connection lost: %s", exc)
            self._drop_listener()
            self._listen_retry_at = time.monotonic() + 1.0
            return
        woke = False
        while conn.notifies:
            note = conn.notifies.pop(0)
            self.stats.notifications += 1
            if note.payload:
                self._notified.add(note.payload)
            woke = True
        if woke and self._wake is not None:
            self._wake.set()

    def _drop_listener(self) -> Any:
        conn, self._listen_conn = self._listen_conn, None
        if self._listen_fd is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self._listen_fd)
            self._listen_fd = None
        self.stats.listening = False
        return conn

    async def _stop_listening(self) -> None:
        await self._close(self._drop_listener())

    @staticmethod
    async def _close(conn: Any) -> None:
        if conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(conn.close)


def get_broadcaster(app: Any) -> ProgressBroadcaster:
    """The app's broadcaster, created on first use."""
    broadcaster = getattr(app.state, "progress_broadcaster", None)
    if broadcaster is None:
        broadcaster = ProgressBroadcaster(app.state.engine, getattr(app.state, "settings", None))
        app.state.progress_broadcaster = broadcaster
    return broadcaster
