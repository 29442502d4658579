"""Reading progress changes from the database: the tick's one query, and PostgreSQL NOTIFY.

Polling (`ProgressReader`)
    Rows are read with `updated_at > since`, where `since` is the start of the previous
    successful read minus a small look-back window. The look-back covers writes that commit a
    little after the timestamp they carry (the service stamps `updated_at` before it commits)
    and small clock differences between writers. Ids named by notifications are read by id in
    the same query, which closes that gap on PostgreSQL. It runs in a worker thread.

LISTEN (`NotifyListener`)
    Migration 0002 adds a trigger that runs `pg_notify('expert_progress', expert_id)` for every
    insert/update of the progress table, whoever writes it (the status API, a Dagster run worker,
    a psql session). While the broadcaster runs, one psycopg 3 connection of its own LISTENs on
    that channel (`AsyncConnection.notifies()`); each notification wakes the reader at once. A
    lost or refused connection is retried (1 s after a loss, 5 s after a failed connect);
    polling goes on meanwhile, and is all there is on SQLite.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, Select, or_, select
from sqlalchemy.orm import Session

from expert_pipeline.core.auth import any_tokens, valid_token_ids
from expert_pipeline.core.models import Expert, ExpertProcessingProgress, Status, utcnow
from expert_pipeline.core.pipeline_health import PipelineState
from expert_pipeline.core.settings import Settings
from status_api.live.encoding import ACTIVE, ProgressChange, encode_record
from status_api.live.snapshot import Seen, seen_of
from status_api.pipeline_probe import observed_state
from status_api.progress_view import present

log = logging.getLogger(__name__)

NOTIFY_CHANNEL = "expert_progress"
RETRY_AFTER_LOST_SECONDS = 1.0
RETRY_AFTER_REFUSED_SECONDS = 5.0


def _alive_at(row: Any) -> datetime | None:
    """The last sign of life stall flips are worked out from: a run's heartbeat, or for a
    pending expert when it was queued."""
    if row.status == Status.IN_PROGRESS:
        return row.heartbeat_at or row.updated_at
    if row.status == Status.PENDING:
        return row.started_at
    return None


class ProgressReader:
    """The broadcaster's database reads (blocking: call them from a worker thread)."""

    def __init__(self, engine: Engine, settings: Settings) -> None:
        self.engine = engine
        self.settings = settings
        # Whether anything will pick pending experts up; read now and then, used for stall flags.
        self.pipeline: PipelineState | None = None
        self._pipeline_read_at = 0.0

    @staticmethod
    def query(since: datetime, ids: Sequence[str], seeding: bool) -> Select[Any]:
        table = ExpertProcessingProgress.__table__
        conditions = [table.c.updated_at > since]
        if ids:
            conditions.append(table.c.expert_id.in_(list(ids)))
        if seeding:
            conditions.append(table.c.status.in_(sorted(ACTIVE)))
        experts = Expert.__table__
        return (
            select(table, experts.c.owner.label("expert_owner"))
            .select_from(table.outerjoin(experts, experts.c.id == table.c.expert_id))
            .where(or_(*conditions))
            .order_by(table.c.updated_at)
        )

    def read(
        self,
        since: datetime,
        ids: list[str],
        seeding: bool,
        pending: dict[str, datetime],
        tracked: Sequence[str] = (),
        seen: Mapping[str, Seen] | None = None,
    ) -> tuple[list[ProgressChange], set[str]]:
        """The tick's single query. Rows are presented exactly as `GET /api/experts/{id}/progress`
        presents them, and encoded once, off the event loop. `pending` (the known pending
        experts and when they were queued) gives the queue positions. `tracked` (the in-memory
        answers' experts) are read by id too; a row equal to what `seen` holds for it is not
        presented again. Returns the presented rows and the ids of every row read."""
        with Session(self.engine) as session:
            rows = session.execute(self.query(since, sorted({*ids, *tracked}), seeding)).all()
        for row in rows:
            if row.status == Status.PENDING:
                pending[row.expert_id] = row.started_at
            else:
                pending.pop(row.expert_id, None)
        order = sorted(pending.items(), key=lambda item: (item[1], item[0]))
        queue = {expert_id: position for position, (expert_id, _) in enumerate(order, 1)}
        now = utcnow()
        # A pending expert waiting past the stall allowance is shown with the pipeline's state:
        # read it every tick then, as the route reads it on every request.
        waiting = bool(order) and now - order[0][1] > timedelta(seconds=self.settings.stall_after_seconds)
        if pending and (waiting or time.monotonic() - self._pipeline_read_at > 2.0):
            with Session(self.engine) as session:
                self.pipeline = observed_state(session)
            self._pipeline_read_at = time.monotonic()
        known = seen or {}
        fresh = [
            r for r in rows if known.get(r.expert_id) != seen_of(r.updated_at, r.heartbeat_at, r.expert_owner)
        ]
        changes = [
            encode_record(
                present(row, self.settings, queue, now, self.pipeline),  # type: ignore[arg-type]
                owner=row.expert_owner,
                alive_at=_alive_at(row),
            )
            for row in fresh
        ]
        return changes, {row.expert_id for row in rows}

    def read_tokens(self, token_ids: set[str], local: bool) -> tuple[set[str], bool]:
        """The token ids still accepted, and (for local-mode streams) whether any token exists."""
        with Session(self.engine) as session:
            return valid_token_ids(session, token_ids), local and any_tokens(session)


def listen_conninfo(engine: Engine) -> str:
    """psycopg 3 connection string for the engine's database (its URL names psycopg2)."""
    return engine.url.set(drivername="postgresql").render_as_string(hide_password=False)


class NotifyListener:
    """LISTEN on `expert_progress`: `on_notify(payload)` for each notification, and
    `on_listening(bool)` as the LISTEN starts and stops (both called on the event loop)."""

    def __init__(
        self, conninfo: str, on_notify: Callable[[str], None], on_listening: Callable[[bool], None]
    ) -> None:
        self.conninfo = conninfo
        self.on_notify = on_notify
        self.on_listening = on_listening
        self.listening = False

    async def run(self) -> None:
        """Listen until cancelled, reconnecting after a failure."""
        while True:
            try:
                await self._listen()
                delay = RETRY_AFTER_LOST_SECONDS
            except Exception as exc:  # noqa: BLE001 - polling still works; retry later
                if self.listening:
                    log.warning("LISTEN connection lost: %s", exc)
                    delay = RETRY_AFTER_LOST_SECONDS
                else:
                    log.warning("LISTEN %s unavailable, polling only: %s", NOTIFY_CHANNEL, exc)
                    delay = RETRY_AFTER_REFUSED_SECONDS
            finally:
                if self.listening:
                    self.listening = False
                    self.on_listening(False)
            await asyncio.sleep(delay)

    async def _listen(self) -> None:
        import psycopg  # PostgreSQL only: ~10 MB a SQLite deployment need not hold

        async with await psycopg.AsyncConnection.connect(
            self.conninfo, autocommit=True, connect_timeout=5
        ) as conn:
            await conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
            self.listening = True
            self.on_listening(True)
            async for note in conn.notifies():
                self.on_notify(note.payload)
