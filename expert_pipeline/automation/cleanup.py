"""Daily cleanup: expired progress records, and everything left behind by deleted experts.

Orphans: stored files and vector namespaces whose expert id has no `experts` row (deleted before
its partition existed, or written by a run still going after the delete) are removed by
`remove_orphaned_data`. It never races a new upload: an upload writes its files before its row
commits, so a folder changed within the grace period (default 1 h) is kept; storage is listed
before the rows are read, and each orphan's row is looked up once more right before deleting.
Vectors are written only by a run, which starts after the row has committed, so a namespace
listed before the rows were read and still without a row is a real orphan; the grace period
applies to it too where the store knows its write time (LanceDB; Pinecone keeps none).
Only names shaped like expert ids (UUIDs) are considered, so a bucket or index shared with
anything else keeps whatever is not ours.
"""

import re
from collections.abc import Callable
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path

import dagster as dg

from expert_pipeline.adapters.file_storage import FileStorage
from expert_pipeline.core.experts_service import expert_prefix
from expert_pipeline.core.models import utcnow
from expert_pipeline.core.ports import VectorStore
from expert_pipeline.ingest.work_area import ExpertWorkArea
from expert_pipeline.partitions import EXPERTS
from expert_pipeline.resources.expert_catalog import ExpertCatalog
from expert_pipeline.resources.ingest_settings import IngestSettings
from expert_pipeline.resources.maintenance_settings import MaintenanceSettings


@dg.op(
    description="Delete completed progress records (and their events) past retention; failed and cancelled ones after a longer retention."
)
def remove_expired_progress(
    context: dg.OpExecutionContext, catalog: ExpertCatalog, maintenance_settings: MaintenanceSettings
) -> int:
    now = utcnow()
    expired = catalog.expired_progress(
        completed_before=now - timedelta(days=maintenance_settings.completed_retention_days),
        failed_before=now - timedelta(days=maintenance_settings.failed_retention_days),
    )
    removed = catalog.delete_progress(expired)
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
    partitions = set(context.instance.get_dynamic_partitions(EXPERTS))
    existing = catalog.existing_experts(partitions)
    gone = sorted(partitions - existing)
    for expert_id in gone:
        file_storage.delete_prefix(expert_prefix(expert_id))
        vector_store.delete_namespace(expert_id)
        ExpertWorkArea(Path(ingest_settings.work_dir), expert_id).remove()
        context.instance.delete_dynamic_partition(EXPERTS, expert_id)
    context.log.info(f"Removed what {len(gone)} deleted experts left behind")
    return len(gone)


# Uploads write their files before the expert row commits; a younger orphan may be one of them.
ORPHAN_GRACE_SECONDS = 3600.0
EXPERTS_FOLDER = "experts/"
_EXPERT_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


class OrphanCleanupConfig(dg.Config):
    grace_seconds: float = ORPHAN_GRACE_SECONDS


@dg.op(
    description="Remove stored files and vector namespaces that no expert row owns, once older than a "
    "grace period (an upload in flight writes its files before its row commits)."
)
def remove_orphaned_data(
    context: dg.OpExecutionContext,
    config: OrphanCleanupConfig,
    catalog: ExpertCatalog,
    file_storage: dg.ResourceParam[FileStorage],
    vector_store: dg.ResourceParam[VectorStore],
) -> dict[str, int]:
    cutoff = utcnow() - timedelta(seconds=config.grace_seconds)
    # Storage first, rows second: whatever was listed and has no row now had none when listed.
    folders = {name for name in file_storage.list_folders(EXPERTS_FOLDER) if _EXPERT_ID.fullmatch(name)}
    namespaces = {name for name in vector_store.list_namespaces() if _EXPERT_ID.fullmatch(name)}
    owned = catalog.existing_experts(folders | namespaces)
    counts = {
        "file_folders_removed": 0,
        "files_removed": 0,
        "vector_namespaces_removed": 0,
        "kept_within_grace": 0,
        "errors": 0,
    }

    def remove(
        kind: str, expert_id: str, changed_at: Callable[[], datetime | None], delete: Callable[[], int]
    ) -> None:
        try:
            changed = changed_at()
            if changed is not None and changed > cutoff:
                counts["kept_within_grace"] += 1
                context.log.info(
                    f"Kept orphaned {kind} of {expert_id}: changed {changed.isoformat()}, within the grace period"
                )
                return
            if catalog.existing_experts([expert_id]):
                return  # its upload committed after the listing
            removed = delete()
        except Exception as exc:  # noqa: BLE001 - one store error must not stop the others' cleanup
            counts["errors"] += 1
            context.log.warning(
                f"Could not remove orphaned {kind} of {expert_id}: {type(exc).__name__}: {exc}"
            )
            return
        if kind == "files":
            counts["file_folders_removed"] += 1
            counts["files_removed"] += removed
        else:
            counts["vector_namespaces_removed"] += 1
        context.log.info(f"Removed orphaned {kind} of {expert_id} (no expert row)")

    for expert_id in sorted(folders - owned):
        prefix = expert_prefix(expert_id)
        remove(
            "files",
            expert_id,
            partial(file_storage.modified_at, prefix),
            partial(file_storage.delete_prefix, prefix),
        )

    def drop(namespace: str) -> int:
        vector_store.delete_namespace(namespace)
        return 1

    for expert_id in sorted(namespaces - owned):
        remove("vectors", expert_id, partial(vector_store.modified_at, expert_id), partial(drop, expert_id))

    context.add_output_metadata({name: dg.MetadataValue.int(value) for name, value in counts.items()})
    context.log.info(
        f"Orphans: removed {counts['file_folders_removed']} file folders ({counts['files_removed']} files) and "
        f"{counts['vector_namespaces_removed']} vector namespaces; kept {counts['kept_within_grace']} within the "
        f"grace period; {counts['errors']} errors"
    )
    if counts["errors"]:
        raise dg.Failure(f"{counts['errors']} orphans could not be removed (see the log); the others were")
    return counts


@dg.op(
    description="Delete finished webhook deliveries past the completed-records retention, and "
    "embedding-cache entries older than their retention."
)
def prune_outbox_and_cache(
    context: dg.OpExecutionContext, catalog: ExpertCatalog, maintenance_settings: MaintenanceSettings
) -> dict[str, int]:
    now = utcnow()
    removed = catalog.prune_outbox_and_cache(
        deliveries_before=now - timedelta(days=maintenance_settings.completed_retention_days),
        cache_before=now - timedelta(days=maintenance_settings.embedding_cache_retention_days),
    )
    context.log.info(
        f"Pruned {removed['webhook_deliveries']} webhook deliveries, {removed['embedding_cache_entries']} cached embeddings"
    )
    return removed


@dg.job(
    description="Daily cleanup of old progress records, deleted experts' leftovers, orphaned files and vectors, "
    "the webhook outbox and the embedding cache."
)
def cleanup_job() -> None:
    remove_expired_progress()
    remove_deleted_experts()
    remove_orphaned_data()
    prune_outbox_and_cache()


cleanup_schedule = dg.ScheduleDefinition(
    job=cleanup_job,
    cron_schedule="0 3 * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Runs the cleanup job every day at 03:00 UTC.",
)
