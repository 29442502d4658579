"""What goes over the wire. Field names and types follow the specification exactly."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

StageName = Literal["file_processing", "text_extraction", "embedding", "pinecone_storage", "complete", "failed"]
StatusName = Literal["pending", "in_progress", "completed", "failed", "cancelled"]


class ProgressRecord(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    expert_id: str
    agent_id: str | None
    stage: StageName
    status: StatusName
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
    stage: StageName
    status: StatusName
    message: str
    data: dict[str, Any]


class ProgressEventsResponse(BaseModel):
    success: Literal[True] = True
    events: list[ProgressEventOut]


class ErrorResponse(BaseModel):
    success: Literal[False] = False
    error: str = Field(description="What went wrong, in words a person can act on")


class HealthResponse(BaseModel):
    status: Literal["ok", "unavailable"]
    database: str


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
