"""The daily cleanup job: expired progress records, and leftovers of deleted experts."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import dagster as dg
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from expert_pipeline.core.db import engine_for
from expert_pipeline.core.models import ExpertProcessingProgress, utcnow
from expert_pipeline.core.progress_service import ExpertProcessingProgressService
from expert_pipeline.core.settings import Settings
from expert_pipeline.code_location import build_definitions
from expert_pipeline.parts import build_vector_store
from expert_pipeline.partitions import experts
from expert_pipeline.resources.vector_store import VectorRecord
from expert_pipeline.work_area import ExpertWorkArea


def _finished(service: ExpertProcessingProgressService, session: Session, expert_id: str, status: str, days_ago: float) -> None:
    service.create_progress_record(expert_id=expert_id)
    if status == "completed":
        service.mark_completed(expert_id=expert_id)
    else:
        service.mark_failed(expert_id=expert_id, error_message="x")
    session.execute(
        update(ExpertProcessingProgress)
        .where(ExpertProcessingProgress.expert_id == expert_id)
        .values(completed_at=utcnow() - timedelta(days=days_ago))
    )
    session.commit()


def test_cleanup_removes_expired_records_and_deleted_experts(settings: Settings, tmp_path: Path) -> None:
    settings = settings.model_copy(update={"completed_retention_days": 30, "failed_retention_days": 90})
    engine = engine_for(settings.resolved_database_url)
    with Session(engine) as session:
        service = ExpertProcessingProgressService(session)
        _finished(service, session, "old-done", "completed", 31)
        _finished(service, session, "new-done", "completed", 1)
        _finished(service, session, "old-failed", "failed", 40)
        _finished(service, session, "ancient-failed", "failed", 91)
        service.create_progress_record(expert_id="running")

    # "gone" was deleted through the API but its partition, files, vectors and work area remain.
    store = build_vector_store(settings)
    store.upsert("gone", [VectorRecord(id="v1", values=[1.0] + [0.0] * 383, metadata={"text": "t"})])
    leftover = settings.files_dir / "experts" / "gone" / "f1" / "a.txt"
    leftover.parent.mkdir(parents=True)
    leftover.write_text("x")
    work = ExpertWorkArea(settings.work_dir, "gone")
    work.dir.mkdir(parents=True)

    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(experts.name, ["gone"])
        job = build_definitions(settings).resolve_job_def("cleanup_job")
        result = job.execute_in_process(instance=instance)
        assert result.success
        assert result.output_for_node("remove_expired_progress") == 2
        assert result.output_for_node("remove_deleted_experts") == 1
        assert instance.get_dynamic_partitions(experts.name) == []

    with Session(engine) as session:
        service = ExpertProcessingProgressService(session)
        remaining = {e for e in ("old-done", "new-done", "old-failed", "ancient-failed", "running") if service.get_progress(e)}
        assert remaining == {"new-done", "old-failed", "running"}
        assert service.list_events("old-done") == [] and service.list_events("new-done") != []
    assert store.count("gone") == 0
    assert not leftover.exists() and not work.dir.exists()


def test_cleanup_prunes_finished_webhook_deliveries_and_old_cached_embeddings(settings: Settings) -> None:
    from expert_pipeline.core.models import EmbeddingCacheEntry, WebhookDelivery

    settings = settings.model_copy(update={"completed_retention_days": 30, "embedding_cache_retention_days": 180})
    engine = engine_for(settings.resolved_database_url)
    now = utcnow()

    def delivery(event_id: str, status: str, days_ago: float) -> WebhookDelivery:
        return WebhookDelivery(
            event_id=event_id, expert_id="e", event_type="expert.completed", url="http://hook.example/x",
            payload={}, status=status, next_attempt_at=now - timedelta(days=days_ago),
        )

    with Session(engine) as session:
        session.add_all([
            delivery("old-delivered", "delivered", 31), delivery("old-failed", "failed", 40),
            delivery("old-pending", "pending", 40), delivery("new-delivered", "delivered", 1),
            EmbeddingCacheEntry(key="a" * 64, model="m", vector=b"\0" * 4, created_at=now - timedelta(days=181)),
            EmbeddingCacheEntry(key="b" * 64, model="m", vector=b"\0" * 4, created_at=now - timedelta(days=10)),
        ])
        session.commit()

    with dg.instance_for_test() as instance:
        result = build_definitions(settings).resolve_job_def("cleanup_job").execute_in_process(instance=instance)
        assert result.success
        assert result.output_for_node("prune_outbox_and_cache") == {"webhook_deliveries": 2, "embedding_cache_entries": 1}

    with Session(engine) as session:
        left = set(session.scalars(select(WebhookDelivery.event_id)))
        assert left == {"old-pending", "new-delivered"}  # still owed, or recent
        assert list(session.scalars(select(EmbeddingCacheEntry.key))) == ["b" * 64]
