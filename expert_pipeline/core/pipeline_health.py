"""Whether the pipeline side is alive, told without importing Dagster: the pending-experts
sensor leaves a heartbeat row on its ticks, so the API can say why a pending expert does not
move ("no pipeline worker has taken this: ...") and `/healthz` can say ingestion is down."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from expert_pipeline.core.models import ExpertProcessingProgress, PipelineHeartbeat, Status, utcnow
from expert_pipeline.core.run_requests import PENDING_SENSOR_NAME as PENDING_SENSOR

# The sensor ticks every second; one write every few seconds is proof enough.
BEAT_INTERVAL_SECONDS = 5.0
# Several missed beats, not one slow tick, before the pipeline counts as gone.
BEAT_STALE_SECONDS = 30.0


def record_beat(session: Session, details: dict[str, Any], name: str = PENDING_SENSOR) -> None:
    row = session.get(PipelineHeartbeat, name)
    if row is None:
        session.add(PipelineHeartbeat(name=name, seen_at=utcnow(), details=details))
    else:
        row.seen_at = utcnow()
        row.details = details
    session.commit()


@dataclass(frozen=True)
class PipelineState:
    seen_at: datetime | None
    details: dict[str, Any] = field(default_factory=dict)
    # A finer diagnosis from the Dagster instance, where the API could look (see status_api).
    diagnosis: str | None = None

    def age(self, now: datetime) -> float | None:
        return None if self.seen_at is None else max(0.0, (now - self.seen_at).total_seconds())

    def alive(self, now: datetime) -> bool:
        age = self.age(now)
        return age is not None and age <= BEAT_STALE_SECONDS

    def reason(self, now: datetime) -> str:
        """Why a pending expert is not being picked up, for users and operators."""
        if self.diagnosis:
            return f"No pipeline worker has taken this: {self.diagnosis}"
        age = self.age(now)
        if age is None:
            return (
                "No pipeline worker has taken this: the Dagster daemon has never run against this "
                "database (start the product with `make up`)"
            )
        return (
            "No pipeline worker has taken this: the Dagster daemon is not running, or the "
            f"pipeline's code location failed to load (last sign of life {_ago(age)} ago; the "
            "Dagster UI's Deployment page says which)"
        )


def read_state(session: Session, name: str = PENDING_SENSOR) -> PipelineState:
    row = session.get(PipelineHeartbeat, name)
    return PipelineState(None) if row is None else PipelineState(row.seen_at, dict(row.details or {}))


class Liveness(Protocol):
    """What stall_reason reads of a progress row."""

    @property
    def status(self) -> str: ...
    @property
    def started_at(self) -> datetime: ...
    @property
    def updated_at(self) -> datetime: ...
    @property
    def heartbeat_at(self) -> datetime | None: ...


def stall_reason(
    record: Liveness,
    now: datetime,
    stall_after_seconds: float,
    pipeline: PipelineState | None,
) -> str | None:
    """Why the expert is not moving, or None while it is (or may still be) fine."""
    limit = timedelta(seconds=stall_after_seconds)
    if record.status == Status.IN_PROGRESS:
        alive = record.heartbeat_at or record.updated_at
        if now - alive > limit:
            return (
                f"No sign of life from the run for {_ago((now - alive).total_seconds())}: its worker "
                "may be overloaded or gone (a run silent for DEAD_RUN_AFTER_SECONDS is failed and retried)"
            )
        return None
    waiting = record.status == Status.PENDING and now - record.started_at > limit
    if waiting and pipeline is not None and not pipeline.alive(now):
        return pipeline.reason(now)
    return None


def stalled_pending(session: Session, now: datetime, stall_after_seconds: float) -> int:
    """How many experts wait in `pending` for longer than the stall allowance."""
    cutoff = now - timedelta(seconds=stall_after_seconds)
    P = ExpertProcessingProgress
    return int(
        session.scalar(select(func.count()).where(P.status == Status.PENDING, P.started_at < cutoff)) or 0
    )


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"{int(seconds)} s"
    if seconds < 7200:
        return f"{int(seconds // 60)} min"
    return f"{seconds / 3600:.1f} h"
