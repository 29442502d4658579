"""Progress records as the API shows them: the stored row plus what is derived at read time
(whether a run has stalled, where a pending expert stands in the queue)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime

from expert_pipeline.core.models import ExpertProcessingProgress, Status, utcnow
from expert_pipeline.core.pipeline_health import PipelineState, read_state, stall_reason
from expert_pipeline.core.progress_service import ExpertProcessingProgressService
from expert_pipeline.core.settings import Settings
from status_api.pipeline_probe import peek
from status_api.schemas import ProgressRecord


def queue_positions(service: ExpertProcessingProgressService) -> dict[str, int]:
    pending = [r for r in service.get_active_progress() if r.status == Status.PENDING]
    return {r.expert_id: i for i, r in enumerate(sorted(pending, key=lambda r: (r.started_at, r.expert_id)), 1)}


def present(
    record: ExpertProcessingProgress,
    settings: Settings,
    queue: dict[str, int] | None = None,
    now: datetime | None = None,
    pipeline: PipelineState | None = None,
) -> ProgressRecord:
    now = now or utcnow()
    view = ProgressRecord.model_validate(record)
    view.stalled_reason = stall_reason(record, now, settings.stall_after_seconds, pipeline)
    view.stalled = view.stalled_reason is not None
    if record.status == Status.PENDING and queue is not None:
        view.queue_position = queue.get(record.expert_id)
    return view


def present_many(
    records: Sequence[ExpertProcessingProgress], settings: Settings, service: ExpertProcessingProgressService
) -> list[ProgressRecord]:
    waiting = any(r.status == Status.PENDING for r in records)
    queue = queue_positions(service) if waiting else {}
    pipeline = read_state(service.db) if waiting else None
    if pipeline is not None and not pipeline.alive(utcnow()):
        diagnosis = peek()  # Dagster's own view, where it could be had without waiting
        if diagnosis is not None and diagnosis.summary:
            pipeline = replace(pipeline, diagnosis=diagnosis.summary)
    now = utcnow()
    return [present(r, settings, queue, now, pipeline) for r in records]
