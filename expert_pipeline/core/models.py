"""Tables shared by the pipeline and the status API (SQLAlchemy 2; no Dagster import)."""

from __future__ import annotations

import enum
import uuid
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Stage(enum.StrEnum):
    FILE_PROCESSING = "file_processing"
    TEXT_EXTRACTION = "text_extraction"
    EMBEDDING = "embedding"
    PINECONE_STORAGE = "pinecone_storage"
    COMPLETE = "complete"
    FAILED = "failed"


class Status(enum.StrEnum):
    PENDING = "pending"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


ACTIVE_STATUSES = (Status.PENDING, Status.IN_PROGRESS)
TERMINAL_STATUSES = (Status.COMPLETED, Status.FAILED, Status.CANCELLED)


class FileStatus(enum.StrEnum):
    PENDING = "pending"
    INDEXED = "indexed"
    FAILED = "failed"


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return str(uuid.uuid4())


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC on every backend.

    SQLite has no time zone type and hands back naive values; storing naive UTC and tagging
    it on the way out gives the same aware datetimes as PostgreSQL's timestamptz.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are ambiguous; pass a timezone-aware value")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UTCDateTime, dict[str, Any]: JSON}


class Expert(Base):
    __tablename__ = "experts"

    id: Mapped[str] = mapped_column(String(128), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200))
    agent_id: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Who created it (the API token's owner); None for experts made in local mode or the CLI.
    owner: Mapped[str | None] = mapped_column(String(200), index=True)


class ApiToken(Base):
    """A bearer token for the status API, stored only as the SHA-256 of the plaintext."""

    __tablename__ = "api_tokens"

    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=new_id)
    owner: Mapped[str] = mapped_column(String(200))
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    operator: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column()
    # None: never expires. A revoked token is kept (so its streams can be told) but never accepted.
    expires_at: Mapped[datetime | None] = mapped_column()
    revoked_at: Mapped[datetime | None] = mapped_column()
    # Where completion and failure mail for this owner's experts goes (optional).
    email: Mapped[str | None] = mapped_column(String(320))


class StreamTicket(Base):
    """A short-lived, single-use ticket for opening a live stream (EventSource cannot send an
    Authorization header, and a token in a URL ends up in logs). Stored as its SHA-256."""

    __tablename__ = "stream_tickets"

    ticket_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    token_id: Mapped[str | None] = mapped_column(String(64))  # None: issued in local mode
    expires_at: Mapped[datetime] = mapped_column()


class PipelineHeartbeat(Base):
    """Proof of life from the pipeline side (e.g. the pending-experts sensor each tick), so the
    API can say why a pending expert is not moving without importing Dagster."""

    __tablename__ = "pipeline_heartbeats"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    seen_at: Mapped[datetime] = mapped_column()
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)


class ExpertFile(Base):
    __tablename__ = "expert_files"

    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=new_id)
    expert_id: Mapped[str] = mapped_column(ForeignKey("experts.id", ondelete="CASCADE"), index=True)
    filename: Mapped[str] = mapped_column(String(255))
    storage_key: Mapped[str] = mapped_column(String(1024))
    size_bytes: Mapped[int] = mapped_column(Integer)
    content_sha256: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default=FileStatus.PENDING)
    error_kind: Mapped[str | None] = mapped_column(String(32))
    error_message: Mapped[str | None] = mapped_column(Text)
    pages: Mapped[int | None] = mapped_column(Integer)
    characters: Mapped[int | None] = mapped_column(Integer)
    chunks: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ExpertProcessingProgress(Base):
    """One row per expert: every field of the specification's JSON example."""

    __tablename__ = "expert_processing_progress"

    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=new_id)
    expert_id: Mapped[str] = mapped_column(String(128), unique=True)
    agent_id: Mapped[str | None] = mapped_column(String(128))
    stage: Mapped[str] = mapped_column(String(32), default=Stage.FILE_PROCESSING)
    status: Mapped[str] = mapped_column(String(16), default=Status.PENDING, index=True)
    current_file: Mapped[str | None] = mapped_column(String(255))
    current_file_index: Mapped[int] = mapped_column(Integer, default=0)
    total_files: Mapped[int] = mapped_column(Integer, default=0)
    current_batch: Mapped[int] = mapped_column(Integer, default=0)
    total_batches: Mapped[int] = mapped_column(Integer, default=0)
    current_chunk: Mapped[int] = mapped_column(Integer, default=0)
    total_chunks: Mapped[int] = mapped_column(Integer, default=0)
    processed_files: Mapped[int] = mapped_column(Integer, default=0)
    failed_files: Mapped[int] = mapped_column(Integer, default=0)
    progress_percentage: Mapped[float] = mapped_column(Float, default=0.0)
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)
    error_message: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    completed_at: Mapped[datetime | None] = mapped_column()
    # Not in the spec's JSON: the Dagster run working on this expert, for operators.
    run_id: Mapped[str | None] = mapped_column(String(64))
    # Beside the spec's fields: an honest estimate (null until it can be made) and the last
    # sign of life from the run, so a silent run shows as stalled rather than frozen.
    eta_seconds: Mapped[float | None] = mapped_column(Float)
    chunks_per_second: Mapped[float | None] = mapped_column(Float)
    heartbeat_at: Mapped[datetime | None] = mapped_column()


class ProgressEvent(Base):
    """The progress history: one row per stage change, file result, failure and completion."""

    __tablename__ = "expert_progress_events"
    __table_args__ = (Index("ix_progress_events_expert_time", "expert_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    expert_id: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    stage: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16))
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)


class EmbeddingCacheEntry(Base):
    """Embeddings by content hash and model, so a retry never pays twice for one chunk."""

    __tablename__ = "embedding_cache"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    model: Mapped[str] = mapped_column(String(128))
    vector: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class WebhookDeliveryStatus(enum.StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


class WebhookDelivery(Base):
    """The webhook outbox: one row per (event, URL), written in the terminal state's transaction.

    `attempts`, `last_status_code` and `last_error` record every attempt; `next_attempt_at` is
    when the row is next due (also the claim lease while a worker is sending it).
    """

    __tablename__ = "webhook_deliveries"
    __table_args__ = (Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(36), index=True)
    expert_id: Mapped[str] = mapped_column(String(128), index=True)
    event_type: Mapped[str] = mapped_column(String(32))
    url: Mapped[str] = mapped_column(String(2048))
    payload: Mapped[dict[str, Any]] = mapped_column()
    status: Mapped[str] = mapped_column(String(16), default=WebhookDeliveryStatus.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column()
