"""Ingest statistics over a time window: counts, time per stage, throughput, failure reasons."""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import datetime
from statistics import quantiles
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from expert_pipeline.core.models import (
    ExpertFile,
    ExpertProcessingProgress,
    FileStatus,
    ProgressEvent,
    Stage,
    Status,
)

WORK_STAGES = [Stage.FILE_PROCESSING, Stage.TEXT_EXTRACTION, Stage.EMBEDDING, Stage.PINECONE_STORAGE]


def _percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None, "count": 0}
    if len(values) == 1:
        return {"p50": round(values[0], 3), "p95": round(values[0], 3), "count": 1}
    cuts = quantiles(values, n=100, method="inclusive")
    return {"p50": round(cuts[49], 3), "p95": round(cuts[94], 3), "count": len(values)}


def stage_durations(events: list[ProgressEvent]) -> dict[str, float]:
    """Seconds spent in each stage of one run, from the times the stages were entered."""
    entered: dict[str, datetime] = {}
    order: list[str] = []
    for event in events:
        if event.stage not in entered:
            entered[event.stage] = event.created_at
            order.append(event.stage)
    return {
        stage: (entered[order[i + 1]] - entered[stage]).total_seconds()
        for i, stage in enumerate(order[:-1])
        if stage in {s.value for s in WORK_STAGES}
    }


def ingest_stats(db: Session, since: datetime, expert_ids: Any = None) -> dict[str, Any]:
    """`expert_ids` (ids or a subquery of ids) narrows the statistics to those experts."""
    P = ExpertProcessingProgress
    scope = [P.started_at >= since]
    file_scope = [ExpertFile.status == FileStatus.FAILED, ExpertFile.created_at >= since]
    if expert_ids is not None:
        scope.append(P.expert_id.in_(expert_ids))
        file_scope.append(ExpertFile.expert_id.in_(expert_ids))
    counts = dict(db.execute(select(P.status, func.count()).where(*scope).group_by(P.status)).all())
    records = list(db.scalars(select(P).where(*scope)))
    finished_ids = [r.expert_id for r in records if r.status == Status.COMPLETED]
    per_stage: dict[str, list[float]] = defaultdict(list)
    if finished_ids:
        events_by_expert: dict[str, list[ProgressEvent]] = defaultdict(list)
        query = select(ProgressEvent).where(
            ProgressEvent.expert_id.in_(finished_ids), ProgressEvent.created_at >= since
        )
        for event in db.scalars(query.order_by(ProgressEvent.id)):
            events_by_expert[event.expert_id].append(event)
        for events in events_by_expert.values():
            # Only the latest run of each expert: from its last "Processing started".
            starts = [i for i, e in enumerate(events) if e.message.startswith("Processing started")]
            for stage, seconds in stage_durations(events[starts[-1] if starts else 0 :]).items():
                per_stage[stage].append(seconds)
    run_seconds = [
        (r.completed_at - r.started_at).total_seconds()
        for r in records
        if r.status == Status.COMPLETED and r.completed_at
    ]
    completed_chunks = sum(r.total_chunks for r in records if r.status == Status.COMPLETED)
    reasons = Counter(
        kind or "unknown" for kind in db.scalars(select(ExpertFile.error_kind).where(*file_scope))
    )
    return {
        "since": since,
        "counts_by_status": {s.value: int(counts.get(s.value, 0)) for s in Status},
        "seconds_per_stage": {s.value: _percentiles(per_stage.get(s.value, [])) for s in WORK_STAGES},
        "seconds_per_expert": _percentiles(run_seconds),
        "throughput_chunks_per_second": round(completed_chunks / sum(run_seconds), 2)
        if run_seconds and sum(run_seconds)
        else None,
        "failed_files_by_kind": dict(reasons.most_common()),
    }


def recent_stage_seconds(db: Session, stage: Stage, experts: int = 20) -> float | None:
    """The median time the latest runs of the last `experts` completed experts spent in
    `stage`, or None without history. Used to tell users how long the stages after the one
    they are watching will take."""
    P = ExpertProcessingProgress
    ids = list(
        db.scalars(
            select(P.expert_id)
            .where(P.status == Status.COMPLETED)
            .order_by(P.completed_at.desc())
            .limit(experts)
        )
    )
    if not ids:
        return None
    events_by_expert: dict[str, list[ProgressEvent]] = defaultdict(list)
    for event in db.scalars(
        select(ProgressEvent).where(ProgressEvent.expert_id.in_(ids)).order_by(ProgressEvent.id)
    ):
        events_by_expert[event.expert_id].append(event)
    seconds = []
    for events in events_by_expert.values():
        starts = [i for i, e in enumerate(events) if e.message.startswith("Processing started")]
        spent = stage_durations(events[starts[-1] if starts else 0 :]).get(stage.value)
        if spent is not None:
            seconds.append(spent)
    return _percentiles(seconds)["p50"] if seconds else None
