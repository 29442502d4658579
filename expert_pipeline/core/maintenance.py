"""The queries behind the pipeline's background jobs: what waits, what went silent, what
expired, what no expert owns any more. Plain SQLAlchemy over a session; no Dagster."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import and_, delete, func, or_, select
from sqlalchemy.orm import Session

from expert_pipeline.core.db import rows_affected
from expert_pipeline.core.models import (
    EmbeddingCacheEntry,
    Expert,
    ExpertProcessingProgress,
    Status,
    WebhookDelivery,
    WebhookDeliveryStatus,
)

P = ExpertProcessingProgress


def pending_requests(session: Session, limit: int = 100) -> list[ExpertProcessingProgress]:
    """Experts waiting for a run, oldest request first."""
    query = select(P).where(P.status == Status.PENDING).order_by(P.started_at).limit(limit)
    return list(session.scalars(query))


def silent_runs(session: Session, silent_since: datetime) -> list[ExpertProcessingProgress]:
    """In-progress experts whose run has given no sign of life since `silent_since`."""
    query = select(P).where(
        P.status == Status.IN_PROGRESS, func.coalesce(P.heartbeat_at, P.updated_at) < silent_since
    )
    return list(session.scalars(query))


def expired_progress(session: Session, completed_before: datetime, failed_before: datetime) -> list[str]:
    """Experts whose final progress record is past its retention (failed/cancelled keep longer)."""
    query = select(P.expert_id).where(
        or_(
            and_(P.status == Status.COMPLETED, P.completed_at < completed_before),
            and_(P.status.in_([Status.FAILED, Status.CANCELLED]), P.completed_at < failed_before),
        )
    )
    return list(session.scalars(query))


def existing_experts(session: Session, expert_ids: Iterable[str]) -> set[str]:
    ids = sorted(set(expert_ids))
    if not ids:
        return set()
    return set(session.scalars(select(Expert.id).where(Expert.id.in_(ids))))


def prune_outbox_and_cache(
    session: Session, deliveries_before: datetime, cache_before: datetime
) -> dict[str, int]:
    """Finished deliveries and old cached embeddings go; pending deliveries are still owed."""
    D = WebhookDelivery
    deliveries = rows_affected(
        session,
        delete(D).where(
            D.status.in_([WebhookDeliveryStatus.DELIVERED, WebhookDeliveryStatus.FAILED]),
            D.next_attempt_at < deliveries_before,
        ),
    )
    cached = rows_affected(
        session, delete(EmbeddingCacheEntry).where(EmbeddingCacheEntry.created_at < cache_before)
    )
    session.commit()
    return {"webhook_deliveries": deliveries, "embedding_cache_entries": cached}
