"""Progress records as the API shows them: the stored row plus what is derived at read time
(whether a run has stalled, where a pending expert stands in the queue)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from expert_pipeline.core.models import ExpertProcessingProgress, Status, utcnow
from expert_pipeline.core.progress_service import ExpertProcessingProgressService
from expert_pipeline.core.settings import Settings
from status_api.schemas import ProgressRecord


def queue_positions(service: ExpertProcessingProgressService) -> dict[str, int]:
    pending = [r for r in service.get_active_progress() if r.status == Status.PENDING]
    return {r.expert_id: i for i, r in enumerate(sorted(pending, key=lambda r: (r.started_at, r.expert_id)), 1)}


def present(
    record: ExpertProcessingProgress,
    settings: Settings,
    queue: dict[str, int] | None = None,
    now: datetime | None = None,
) -> ProgressRecord:
    now = now or utcnow()
    view = ProgressRecord.model_validate(record)
    if record.status == Status.IN_PROGRESS:
        alive = record.heartbeat_at or record.updated_at
        view.stalled = now - alive > timedelta(seconds=settings.stall_after_seconds)
    if record.status == Status.PENDING and queue is not None:
        view.queue_position = queue.get(record.expert_id)
    return view


def present_many(
    records: Sequence[ExpertProcessingProgress], settings: Settings, service: ExpertProcessingProgressService
) -> list[ProgressRecord]:
    queue = queue_positions(service) if any(r.status == Status.PENDING for r in records) else {}
    now = utcnow()
    return [present(r, settings, queue, now) for r in records]
