"""Live progress for many listeners from one database read per tick.

One `ProgressBroadcaster` lives on each app (`app.state.progress_broadcaster`). The first
subscriber starts a single background poller task (and, on PostgreSQL, a LISTEN task); the
last one to leave stops them. Each tick the poller runs ONE query for the progress rows whose
`updated_at` moved (`listening.ProgressReader`), turns every changed row into an event once
(`encoding`), and offers it to the subscribers' bounded queues (`fanout`). However many
browsers watch, the database sees the same reads. A notification wakes the poller at once;
bursts are coalesced (reads never run closer together than `min_read_gap_seconds`), and rows
read twice inside the look-back window are recognised by their `updated_at` and sent once.

In-memory answers: the same reads keep `answers` (`snapshot.ProgressSnapshot`), from which
`status_api.api.hot_reads` serves the polled GETs. Those requests keep the poller running
(`hold`) for `hold_seconds` after the last one, streams or not; the experts held there are
read by id in the tick's query as well.

Revoked tokens: every `token_recheck_seconds` (10 s) the poller asks, in one query, whether the
tokens the open streams were authenticated with are still accepted; a stream whose token was
revoked or has expired (or opened in local mode, once a token exists) is ended.

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

from sqlalchemy import Engine

from expert_pipeline.core.auth import Principal
from expert_pipeline.core.models import Status, utcnow
from expert_pipeline.core.pipeline_health import stall_reason
from expert_pipeline.core.settings import Settings, get_settings
from status_api.live.encoding import ProgressChange
from status_api.live.fanout import Fanout, Subscription
from status_api.live.listening import NotifyListener, ProgressReader, listen_conninfo
from status_api.live.snapshot import ProgressSnapshot

log = logging.getLogger(__name__)

# Notified ids read by id in one tick; beyond this the time window alone is used for that tick.
MAX_IDS_PER_READ = 500


@dataclass(frozen=True)
class _Liveness:
    """What `stall_reason` reads of a row, from what a change already knows."""

    status: str
    started_at: datetime
    updated_at: datetime
    heartbeat_at: datetime | None


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
        hold_seconds: float = 30.0,
    ) -> None:
        self.engine = engine
        self.settings = settings or get_settings()
        self.tick_seconds = tick_seconds
        self.lookback_seconds = lookback_seconds
        self.min_read_gap_seconds = min_read_gap_seconds
        # A stream that had nothing to send for this long sends a keepalive comment.
        self.keepalive_seconds = keepalive_seconds
        self.reseed_seconds = reseed_seconds
        self.use_listen = use_listen and engine.dialect.name == "postgresql"
        self.token_recheck_seconds = token_recheck_seconds
        self.stats = BroadcasterStats()
        self._reader = ProgressReader(engine, self.settings)
        self._subs = Fanout(queue_size)
        # The polled GETs' answers, from the latest read if it started at most two ticks ago
        # (otherwise they wait for the next read, then the database answers).
        self.answers = ProgressSnapshot(self.settings, fresh_seconds=2 * tick_seconds)
        self._read_done: asyncio.Event | None = None
        self.hold_seconds = hold_seconds
        self._hold_until = 0.0

        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._seeded: asyncio.Event | None = None
        self._since: datetime | None = None
        # The newest version sent per expert (dedupes rows read again inside the look-back).
        self._versions: dict[str, tuple[datetime, int]] = {}
        # The newest event of every active expert: the snapshot a new "all" subscriber gets.
        self._active: dict[str, ProgressChange] = {}
        self._notified: set[str] = set()
        self._recheck_at = 0.0
        self._reseed_at = 0.0

    # -- subscribing -------------------------------------------------------------------------

    @property
    def subscriber_count(self) -> int:
        return len(self._subs)

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def subscribe(
        self,
        expert_id: str | None = None,
        viewer: Principal | None = None,
        opened_by: Principal | None = None,
    ) -> Subscription:
        """Register a listener and make sure the poller runs. Call on the event loop.
        `viewer` limits an "all" listener to the experts that principal may see; `opened_by`
        (the caller) is re-checked while it listens (its token revoked: the stream ends)."""
        sub = self._subs.add(expert_id, viewer, opened_by)
        self.stats.subscribers = self.subscriber_count
        self._ensure_running()
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subs.remove(sub)
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

    def hold(self) -> None:
        """Keep reading for `hold_seconds` more, listeners or not (a polled GET was answered or
        missed). Call on the event loop."""
        self._hold_until = time.monotonic() + self.hold_seconds
        self._ensure_running()

    def wake(self) -> None:
        """Read now rather than at the next tick (memory was written past). On the event loop."""
        if self._wake is not None:
            self._wake.set()

    async def next_read(self, timeout: float) -> bool:
        """Wait (at most `timeout` seconds) for the next read to end, asking for it now; False
        when none ended in time or the poller is not running. On the event loop."""
        done = self._read_done
        if done is None or not self.running:
            return False
        self.wake()
        try:
            async with asyncio.timeout(timeout):
                await done.wait()
        except TimeoutError:
            return False
        return True

    def _read_ended(self) -> None:
        done, self._read_done = self._read_done, asyncio.Event()
        if done is not None:
            done.set()

    def _wanted(self) -> bool:
        return bool(self.subscriber_count) or time.monotonic() < self._hold_until

    def _ensure_running(self) -> None:
        if self.running:
            return
        self._wake = asyncio.Event()
        self._seeded = asyncio.Event()
        self._since = None
        self._versions.clear()
        self._active.clear()
        self._notified.clear()
        self.answers.reset()
        self._read_ended()
        self.stats.pollers_started += 1
        self._recheck_at = time.monotonic() + self.token_recheck_seconds  # just authenticated
        self._task = asyncio.get_running_loop().create_task(self._run(), name="progress-broadcaster")

    async def aclose(self) -> None:
        """Stop the poller and drop every subscriber (app shutdown)."""
        self._subs.clear()
        self.stats.subscribers = 0
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    # -- the poller --------------------------------------------------------------------------

    async def _run(self) -> None:
        assert self._wake is not None and self._seeded is not None
        listening = self._start_listening()
        last_read = 0.0
        try:
            while self._wanted():
                if self._seeded.is_set():
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self.tick_seconds):
                            await self._wake.wait()
                self._wake.clear()
                if not self._wanted():
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
        except Exception:
            log.exception("progress broadcaster stopped unexpectedly")
        finally:
            if self._task is asyncio.current_task():
                self._task = None
            if listening is not None:
                listening.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await listening

    def _start_listening(self) -> asyncio.Task[None] | None:
        if not self.use_listen:
            return None
        wake = self._wake
        assert wake is not None

        def on_notify(expert_id: str) -> None:
            self.stats.notifications += 1
            if expert_id:
                self._notified.add(expert_id)
            wake.set()

        def on_listening(listening: bool) -> None:
            self.stats.listening = listening

        listener = NotifyListener(listen_conninfo(self.engine), on_notify, on_listening)
        return asyncio.get_running_loop().create_task(listener.run(), name="progress-listen")

    async def _tick(self) -> None:
        assert self._seeded is not None
        ids, self._notified = self._notified, set()
        if len(ids) > MAX_IDS_PER_READ:
            ids = set()
        seeding = not self._seeded.is_set()
        # Now and then the active set is read whole again, so an expert deleted while active
        # leaves the snapshot (still this tick's one query).
        reseeding = seeding or time.monotonic() >= self._reseed_at
        started = datetime.now(UTC)
        since = self._since or (started - timedelta(seconds=self.lookback_seconds))
        t0 = time.perf_counter()
        read_started = time.monotonic()
        tracked = self.answers.ids_to_read()
        # A reseed rebuilds the streams' snapshot from what it reads: every row is presented.
        seen = None if reseeding else self.answers.seen()
        try:
            pending = (
                {}
                if reseeding
                else {c.expert_id: c.started_at for c in self._active.values() if c.status == Status.PENDING}
            )
            changes, returned = await asyncio.to_thread(
                self._reader.read, since, sorted(ids), reseeding, pending, tracked, seen
            )
        except Exception as exc:  # noqa: BLE001 - a database outage: keep subscribers, retry
            self.stats.read_errors += 1
            self._notified |= ids
            if self.stats.read_errors in (1, 10) or self.stats.read_errors % 100 == 0:
                log.warning("progress broadcaster cannot read the database: %s", exc)
            self._read_ended()  # who waits for it: the database answers them
            await asyncio.sleep(min(2.0, self.tick_seconds * 5))
            return
        self.stats.last_read_seconds = time.perf_counter() - t0
        self.stats.reads += 1
        self.stats.ticks += 1
        self.stats.rows_read += len(changes)
        # The next read looks back from when this one started (commit lag, clock skew).
        self._since = started - timedelta(seconds=self.lookback_seconds)
        # The first read after start is the baseline: "all" subscribers get it as their
        # snapshot (active experts only), not as a burst of old changes. One-expert subscribers
        # still get it (they drop versions they already have).
        self._publish(changes, to_all=not seeding)
        self.answers.apply(changes, tracked, returned, read_started, self._reader.pipeline)
        self._read_ended()
        if reseeding:
            # Entries already known stay (they carry what was last sent, e.g. a stalled flag);
            # experts no longer active, or deleted, leave.
            self._active = {c.expert_id: self._active.get(c.expert_id, c) for c in changes if c.active}
            self._reseed_at = time.monotonic() + self.reseed_seconds
        if seeding:
            self._seeded.set()
        self._push_stall_flips()
        self._prune(self._since)

    async def _recheck_tokens(self) -> None:
        """End the streams whose token is no longer accepted (one query for all of them)."""
        subs = list(self._subs)
        token_ids = {s.token_id for s in subs if s.token_id is not None}
        local = any(s.local for s in subs)
        if not token_ids and not local:
            return
        try:
            valid, tokens_exist = await asyncio.to_thread(self._reader.read_tokens, token_ids, local)
        except Exception as exc:  # noqa: BLE001 - a database outage is no reason to cut streams
            log.warning("cannot re-check the streams' API tokens: %s", exc)
            return
        for sub in subs:
            if (sub.token_id is not None and sub.token_id not in valid) or (sub.local and tokens_exist):
                sub.end()

    def _publish(self, changes: Iterable[ProgressChange], *, to_all: bool = True) -> None:
        """On the event loop: cache update and queueing happen without an await."""
        for change in changes:
            sent = self._versions.get(change.expert_id)
            if sent is not None and change.updated_at <= sent[0]:
                self._refresh_liveness(change)
                continue
            self._versions[change.expert_id] = change.version
            if change.active:
                self._active[change.expert_id] = change
            else:
                self._active.pop(change.expert_id, None)
            self.stats.changes += 1
            self._fan_out(change, to_all=to_all)

    def _fan_out(self, change: ProgressChange, *, to_all: bool = True) -> None:
        queued, dropped = self._subs.send(change, to_all=to_all)
        self.stats.frames_queued += queued
        self.stats.frames_dropped += dropped

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
            reason = stall_reason(liveness, now, self.settings.stall_after_seconds, self._reader.pipeline)
            if reason != change.stalled_reason:
                self._resend(change.with_stalled(reason))

    def _prune(self, since: datetime) -> None:
        # A version older than the window can never be read again by time; drop it unless it
        # is an active expert (whose entry also guards the snapshot).
        stale = [k for k, v in self._versions.items() if v[0] <= since and k not in self._active]
        for key in stale:
            del self._versions[key]


def get_broadcaster(app: Any) -> ProgressBroadcaster:
    """The app's broadcaster, created on first use."""
    broadcaster = getattr(app.state, "progress_broadcaster", None)
    if broadcaster is None:
        broadcaster = ProgressBroadcaster(app.state.engine, getattr(app.state, "settings", None))
        app.state.progress_broadcaster = broadcaster
    return broadcaster
