"""Progress records as the API shows them: `present` (the stored row plus what is derived at read
time) is the pipeline's own (`expert_pipeline.core.progress_public`); this adds what only the API
looks up: queue positions and the pipeline's state for pending experts."""

from __future__ import annotations

from collections.abc import Sequence

from expert_pipeline.core.models import ExpertProcessingProgress, Status, utcnow
from expert_pipeline.core.progress_public import ProgressRecord, present
from expert_pipeline.core.progress_service import ExpertProcessingProgressService
from expert_pipeline.core.settings import Settings
from status_api.pipeline_probe import observed_state

__all__ = ["present", "present_many", "present_one", "queue_positions"]


def queue_positions(service: ExpertProcessingProgressService) -> dict[str, int]:
    pending = [r for r in service.get_active_progress() if r.status == Status.PENDING]
    return {
        r.expert_id: i for i, r in enumerate(sorted(pending, key=lambda r: (r.started_at, r.expert_id)), 1)
    }


def present_many(
    records: Sequence[ExpertProcessingProgress], settings: Settings, service: ExpertProcessingProgressService
) -> list[ProgressRecord]:
    waiting = any(r.status == Status.PENDING for r in records)
    queue = queue_positions(service) if waiting else {}
    pipeline = observed_state(service.db) if waiting else None
    now = utcnow()
    return [present(r, settings, queue, now, pipeline) for r in records]


def present_one(
    record: ExpertProcessingProgress, settings: Settings, service: ExpertProcessingProgressService
) -> ProgressRecord:
    """One record, presented exactly as in a list (queue place and stall reason included)."""
    return present_many([record], settings, service)[0]
