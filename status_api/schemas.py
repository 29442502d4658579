"""What goes over the wire. Field names and types follow the specification exactly."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from expert_pipeline.core.models import Stage, Status
from expert_pipeline.core.progress_public import ProgressRecord  # one definition: API, stream, webhooks


class ProgressResponse(BaseModel):
    success: Literal[True] = True
    progress: ProgressRecord


class ActiveProgressResponse(BaseModel):
    success: Literal[True] = True
    count: int
    progress_records: list[ProgressRecord]


class SuccessResponse(BaseModel):
    success: Literal[True] = True


class ProgressEventOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    expert_id: str
    created_at: datetime
    stage: Stage
    status: Status
    message: str
    data: dict[str, Any]


class ProgressEventsResponse(BaseModel):
    success: Literal[True] = True
    events: list[ProgressEventOut]


class ErrorResponse(BaseModel):
    success: Literal[False] = False
    error: str = Field(description="What went wrong, in words a person can act on")


class LabelsResponse(BaseModel):
    """The words people see for each stage and status (the dashboard, chat, the CLI share them)."""

    stages: dict[Stage, str] = Field(description="Words for each stage")
    statuses: dict[Status, str] = Field(description="Words for each status (the dashboard's badge)")
    status_over_stage: list[Status] = Field(
        description="Statuses whose words replace the stage's under a progress bar (waiting, stopped)"
    )


class PipelineHealth(BaseModel):
    status: Literal["ok", "down", "unknown"] = Field(
        description="ok: the pipeline picked work up recently; down: it stopped; unknown: it never ran here"
    )
    last_seen_seconds_ago: float | None = Field(description="Since the pending-experts sensor last ticked")
    daemon_heartbeat_age_seconds: float | None = Field(
        default=None,
        description="Age of the Dagster daemon's newest heartbeat (looked up when the pipeline is down)",
    )
    code_location_error: str | None = None
    queued_runs: int | None = Field(default=None, description="Runs waiting in Dagster's queue")
    stalled_experts: int = Field(description="Pending experts waiting longer than STALL_AFTER_SECONDS")
    reason: str | None = Field(default=None, description="Why ingestion cannot progress, when it cannot")


class HealthResponse(BaseModel):
    status: Literal["ok", "unavailable"]
    database: str
    pipeline: PipelineHealth | None = None


class ExpertFileOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    filename: str
    size_bytes: int
    status: Literal["pending", "indexed", "failed"]
    error_kind: str | None
    error_message: str | None
    pages: int | None
    chunks: int | None


class ExpertOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    agent_id: str | None
    created_at: datetime
    files: list[ExpertFileOut]


class ExpertWithProgress(ExpertOut):
    progress: ProgressRecord | None
    ready: bool = Field(
        default=False,
        description="Chat answers: not being processed, and at least one file indexed (progress row or not)",
    )


class ExpertCreatedResponse(BaseModel):
    success: Literal[True] = True
    expert: ExpertOut
    progress: ProgressRecord


class ExpertResponse(BaseModel):
    success: Literal[True] = True
    expert: ExpertWithProgress


class ExpertListResponse(BaseModel):
    success: Literal[True] = True
    count: int
    experts: list[ExpertWithProgress]


# -- chat ------------------------------------------------------------------------------------


class ChatRequest(BaseModel):
    model_config = ConfigDict(str_strip_whitespace=True)

    # Surrounding whitespace is stripped before the length is checked: a message needs a visible
    # character (documented as a pattern; validation keeps its own words).
    message: str = Field(
        min_length=1,
        max_length=2000,
        description="The question, 1 to 2000 characters",
        json_schema_extra={"pattern": r"\S"},
    )


class ChatResponse(BaseModel):
    success: Literal[True] = True
    answer: str = Field(description="The answer; [n] refers to sources[n-1]")
    sources: list[SearchResult]


# -- search (what the chat retrieves, shown as it is ranked) ------------------------------------

SEARCH_MAX_TOP_K = 50


class SearchRequest(BaseModel):
    model_config = ConfigDict(str_strip_whitespace=True)

    query: str = Field(
        min_length=1,
        max_length=2000,
        description="What to look for, 1 to 2000 characters",
        json_schema_extra={"pattern": r"\S"},
    )
    top_k: int = Field(default=5, ge=1, le=SEARCH_MAX_TOP_K, description="How many passages, 1 to 50")


class SearchResult(BaseModel):
    filename: str
    page: int | None = Field(description="The page the passage starts on (None: the file has no pages)")
    page_end: int | None = Field(
        default=None, description="The last page, when the passage runs onto a later page"
    )
    text: str = Field(description="The passage")
    score: float = Field(
        description="Relevance 0..1, higher is better: vector and keyword rankings fused by "
        "reciprocal rank, 1 = first in both"
    )


# A chat source is a retrieved passage: one shape for both, so they can never disagree.
ChatSource = SearchResult


class SearchResponse(BaseModel):
    success: Literal[True] = True
    results: list[SearchResult] = Field(description="Best first; the passages the chat would read")


# -- stats -----------------------------------------------------------------------------------


class Percentiles(BaseModel):
    p50: float | None
    p95: float | None
    count: int


class StatsResponse(BaseModel):
    success: Literal[True] = True
    since: datetime
    counts_by_status: dict[Status, int]
    seconds_per_stage: dict[str, Percentiles]
    seconds_per_expert: Percentiles
    throughput_chunks_per_second: float | None = Field(
        description="Chunks of completed experts per second of their runs"
    )
    failed_files_by_kind: dict[str, int]
