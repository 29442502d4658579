"""Daily cleanup: expired progress records, and everything left behind by deleted experts."""


from datetime import timedelta

import dagster as dg
from sqlalchemy import and_, delete, or_, select
from sqlalchemy.orm import Session

from expert_pipeline.core.models import (
    EmbeddingCacheEntry, Expert, ExpertProcessingProgress, Status, WebhookDelivery, WebhookDeliveryStatus, utcnow,
)
from expert_pipeline.core.progress_service import ExpertProcessingProgressService
from expert_pipeline.partitions import experts
from expert_pipeline.resources.expert_catalog import ExpertCatalog
from expert_pipeline.core.experts_service import expert_prefix
from expert_pipeline.resources.file_storage import FileStorage
from expert_pipeline.resources.ingest_settings import IngestSettings
from expert_pipeline.resources.maintenance_settings import MaintenanceSettings
from expert_pipeline.resources.vector_store import VectorStore
from expert_pipeline.work_area import ExpertWorkArea


@dg.op(description="Delete completed progress records (and their events) past retention; failed and cancelled ones after a longer retention.")
def remove_expired_progress(
    context: dg.OpExecutionContext, catalog: ExpertCatalog, maintenance_settings: MaintenanceSettings
) -> int:
    now = utcnow()
    completed_before = now - timedelta(days=maintenance_settings.completed_retention_days)
    failed_before = now - timedelta(days=maintenance_settings.failed_retention_days)
    P = ExpertProcessingProgress
    with Session(catalog.engine) as session:
        expired = list(
            session.scalars(
                select(P.expert_id).where(
                    or_(
                        and_(P.status == Status.COMPLETED, P.completed_at < completed_before),
                        and_(P.status.in_([Status.FAILED, Status.CANCELLED]), P.completed_at < failed_before),
                    )
                )
            )
        )
        removed = ExpertProcessingProgressService(session).delete_many(expired)
    context.log.info(f"Removed {removed} expired progress records")
    return removed


@dg.op(description="Remove the partitions, stored files, vectors and work areas of deleted experts.")
def remove_deleted_experts(
    context: dg.OpExecutionContext,
    catalog: ExpertCatalog,
    file_storage: dg.ResourceParam[FileStorage],
    vector_store: dg.ResourceParam[VectorStore],
    ingest_settings: IngestSettings,
) -> int:
    partitions = set(context.instance.get_dynamic_partitions(experts.name))
    with Session(catalog.engine) as session:
        existing = set(session.scalars(select(Expert.id).where(Expert.id.in_(partitions)))) if partitions else set()
    gone = sorted(partitions - existing)
    for expert_id in gone:
        file_storage.delete_prefix(expert_prefix(expert_id))
        vector_store.delete_namespace(expert_id)
        ExpertWorkArea(ingest_settings.work_dir, expert_id).remove()
        context.instance.delete_dynamic_partition(experts.name, expert_id)
    context.log.info(f"Removed what {len(gone)} deleted experts left behind")
    return len(gone)


@dg.op(description="Delete finished webhook deliveries past the completed-records retention, and "
       "embedding-cache entries older than their retention.")
def prune_outbox_and_cache(
    context: dg.OpExecutionContext, catalog: ExpertCatalog, maintenance_settings: MaintenanceSettings
) -> dict[str, int]:
    now = utcnow()
    deliveries_before = now - timedelta(days=maintenance_settings.completed_retention_days)
    cache_before = now - timedelta(days=maintenance_settings.embedding_cache_retention_days)
    D = WebhookDelivery
    with Session(catalog.engine) as session:
        # Pending deliveries are still owed to someone; only finished ones go.
        deliveries = session.execute(
            delete(D).where(
                D.status.in_([WebhookDeliveryStatus.DELIVERED, WebhookDeliveryStatus.FAILED]),
                D.next_attempt_at < deliveries_before,
            )
        ).rowcount
        cached = session.execute(delete(EmbeddingCacheEntry).where(EmbeddingCacheEntry.created_at < cache_before)).rowcount
        session.commit()
    removed = {"webhook_deliveries": int(deliveries or 0), "embedding_cache_entries": int(cached or 0)}
    context.log.info(f"Pruned {removed['webhook_deliveries']} webhook deliveries, {removed['embedding_cache_entries']} cached embeddings")
    return removed


@dg.job(description="Daily cleanup of old progress records, deleted experts' leftovers, the webhook outbox and the embedding cache.")
def cleanup_job() -> None:
    remove_expired_progress()
    remove_deleted_experts()
    prune_outbox_and_cache()


cleanup_schedule = dg.ScheduleDefinition(
    job=cleanup_job,
    cron_schedule="0 3 * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Runs the cleanup job every day at 03:00 UTC.",
)
