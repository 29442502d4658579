"""A progress record as everyone outside the pipeline sees it: one typed model, one `present()`,
one table of words. The status API, its live stream and the webhooks all use these (no Dagster,
no FastAPI import, so the pipeline can use them too).

The first fields are the specification's (`../shared/spec/expert-processing-progress.md`),
by name and in its order (`SPEC_FIELDS`); the documented extras follow (`EXTRA_FIELDS`).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from types import MappingProxyType
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from expert_pipeline.core.models import ExpertProcessingProgress, Stage, Status, utcnow
from expert_pipeline.core.pipeline_health import PipelineState, stall_reason
from expert_pipeline.core.settings import Settings

# The specification's progress JSON, key by key in its order; the webhook carries exactly these.
SPEC_FIELDS: tuple[str, ...] = (
    "id",
    "expert_id",
    "agent_id",
    "stage",
    "status",
    "current_file",
    "current_file_index",
    "total_files",
    "current_batch",
    "total_batches",
    "current_chunk",
    "total_chunks",
    "processed_files",
    "failed_files",
    "progress_percentage",
    "details",
    "error_message",
    "started_at",
    "updated_at",
    "completed_at",
)
# Published beside the specification's fields by the API and the live stream, never instead of them.
EXTRA_FIELDS: tuple[str, ...] = (
    "eta_seconds",
    "chunks_per_second",
    "heartbeat_at",
    "stalled",
    "stalled_reason",
    "queue_position",
)


class ProgressRecord(BaseModel):
    """One expert's progress: the specification's fields, then the extras."""

    model_config = ConfigDict(from_attributes=True)

    id: str
    expert_id: str
    agent_id: str | None
    stage: Stage
    status: Status
    current_file: str | None
    current_file_index: int
    total_files: int
    current_batch: int
    total_batches: int
    current_chunk: int
    total_chunks: int
    processed_files: int
    failed_files: int
    progress_percentage: float
    details: dict[str, Any]
    error_message: str | None
    started_at: datetime
    updated_at: datetime
    completed_at: datetime | None
    eta_seconds: float | None = Field(
        default=None, description="Seconds left, from a smoothed chunk rate; null until it can be estimated"
    )
    chunks_per_second: float | None = Field(default=None, description="Smoothed embedding throughput")
    heartbeat_at: datetime | None = Field(default=None, description="Last sign of life from the run")
    stalled: bool = Field(
        default=False,
        description="Not moving for STALL_AFTER_SECONDS: a run with no sign of life, or a pending expert "
        "that no pipeline worker has taken",
    )
    stalled_reason: str | None = Field(
        default=None, description="Why it is stalled, for people; null when not"
    )
    queue_position: int | None = Field(default=None, description="1 = next to start; only while pending")

    def spec_json(self) -> dict[str, Any]:
        """The specification's fields only, as JSON values (times as ISO 8601 with `Z`)."""
        return self.model_dump(mode="json", include=set(SPEC_FIELDS))


def present(
    record: ExpertProcessingProgress,
    settings: Settings,
    queue: Mapping[str, int] | None = None,
    now: datetime | None = None,
    pipeline: PipelineState | None = None,
) -> ProgressRecord:
    """The stored row plus what is derived at read time: whether it stalled, its queue place."""
    now = now or utcnow()
    view = ProgressRecord.model_validate(record)
    view.stalled_reason = stall_reason(record, now, settings.stall_after_seconds, pipeline)
    view.stalled = view.stalled_reason is not None
    if record.status == Status.PENDING and queue is not None:
        view.queue_position = queue.get(record.expert_id)
    return view


# -- words -------------------------------------------------------------------------------------

# The one table of words for stages and statuses: event messages, chat's "not ready" answer, the
# terminal bar and the dashboard (served by GET /api/meta/labels) all read it.
STAGE_LABELS: Mapping[Stage, str] = MappingProxyType(
    {
        Stage.FILE_PROCESSING: "Processing files",
        Stage.TEXT_EXTRACTION: "Extracting text",
        Stage.EMBEDDING: "Generating embeddings",
        Stage.PINECONE_STORAGE: "Storing vectors",
        Stage.COMPLETE: "Complete",
        Stage.FAILED: "Failed",
    }
)
STATUS_LABELS: Mapping[Status, str] = MappingProxyType(
    {
        Status.PENDING: "Queued",
        Status.IN_PROGRESS: "Processing",
        Status.COMPLETED: "Ready",
        Status.FAILED: "Failed",
        Status.CANCELLED: "Cancelled",
    }
)
# A waiting or stopped record has no stage worth naming; every other status implies its stage.
STATUSES_OVER_STAGE: tuple[Status, ...] = (Status.PENDING, Status.CANCELLED)


def stage_label(stage: str) -> str:
    """The words for a stage; an unknown value is shown as it is rather than failing."""
    try:
        return STAGE_LABELS[Stage(stage)]
    except ValueError:
        return str(stage)


def progress_in_words(status: str, stage: str) -> str:
    """Where a record stands, in the words the dashboard shows under its bar."""
    if status in STATUSES_OVER_STAGE:
        return STATUS_LABELS[Status(status)]
    return stage_label(stage)
