"""The daily cleanup job: expired progress records, and leftovers of deleted experts."""

from __future__ import annotations

import io
import os
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from expert_pipeline.core.db import engine_for
from expert_pipeline.core.models import Expert, ExpertProcessingProgress, utcnow
from expert_pipeline.core.progress_service import ExpertProcessingProgressService
from expert_pipeline.core.settings import Settings
from expert_pipeline.definitions import build_definitions
from expert_pipeline.adapters.factory import build_file_storage, build_vector_store
from expert_pipeline.partitions import experts
from expert_pipeline.adapters.vector_store import VectorRecord
from expert_pipeline.ingest.work_area import ExpertWorkArea
from tests.pinecone_standin import API_KEY as PINECONE_KEY
from tests.pinecone_standin import PineconeStandin


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


def test_cleanup_removes_expired_records_and_deleted_experts(
    settings: Settings, instance: dg.DagsterInstance, tmp_path: Path
) -> None:
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

    instance.add_dynamic_partitions(experts.name, ["gone"])
    result = _run_cleanup(settings, instance)
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


def test_cleanup_prunes_finished_webhook_deliveries_and_old_cached_embeddings(
    settings: Settings, instance: dg.DagsterInstance
) -> None:
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

    result = _run_cleanup(settings, instance)
    assert result.output_for_node("prune_outbox_and_cache") == {"webhook_deliveries": 2, "embedding_cache_entries": 1}

    with Session(engine) as session:
        left = set(session.scalars(select(WebhookDelivery.event_id)))
        assert left == {"old-pending", "new-delivered"}  # still owed, or recent
        assert list(session.scalars(select(EmbeddingCacheEntry.key))) == ["b" * 64]


# -- orphans: stored data that no expert row owns ------------------------------------------------


def _orphan_counts(result: dg.ExecuteInProcessResult) -> tuple[dict[str, int], dict[str, int]]:
    """The op's returned counts and the metadata recorded on its output (what the UI shows)."""
    (output,) = [e for e in result.events_for_node("remove_orphaned_data") if e.is_successful_output]
    metadata = {name: value.value for name, value in output.event_specific_data.metadata.items()}
    return result.output_for_node("remove_orphaned_data"), metadata


def _run_cleanup(
    settings: Settings, instance: dg.DagsterInstance, grace_seconds: float | None = None
) -> dg.ExecuteInProcessResult:
    config = {} if grace_seconds is None else {"ops": {"remove_orphaned_data": {"config": {"grace_seconds": grace_seconds}}}}
    result = build_definitions(settings).resolve_job_def("cleanup_job").execute_in_process(
        instance=instance, run_config=config
    )
    assert result.success
    return result


def _vector(dimensions: int) -> list[VectorRecord]:
    return [VectorRecord(id="v1", values=[1.0] + [0.0] * (dimensions - 1), metadata={"text": "t"})]


def _add_expert(settings: Settings, expert_id: str) -> None:
    with Session(engine_for(settings.resolved_database_url)) as session:
        session.add(Expert(id=expert_id, name="Owned"))
        session.commit()


def _backdate(path: Path, hours: float) -> None:
    old = time.time() - hours * 3600
    for entry in [path, *path.rglob("*")]:
        os.utime(entry, (old, old))


def test_cleanup_removes_local_files_and_lancedb_tables_no_expert_owns(
    settings: Settings, instance: dg.DagsterInstance
) -> None:
    owned, old_orphan, fresh_orphan, vector_orphan = (str(uuid.uuid4()) for _ in range(4))
    _add_expert(settings, owned)
    store = build_vector_store(settings)

    def stored_file(expert_id: str) -> Path:
        path = settings.files_dir / "experts" / expert_id / uuid.uuid4().hex / "a.txt"
        path.parent.mkdir(parents=True)
        path.write_text("x")
        return path.parents[1]

    owned_dir, old_dir, fresh_dir = stored_file(owned), stored_file(old_orphan), stored_file(fresh_orphan)
    _backdate(owned_dir, 5)
    _backdate(old_dir, 2)  # e.g. its expert was deleted before its partition existed
    not_ours = settings.files_dir / "experts" / "not-an-expert-id"
    not_ours.mkdir()
    _backdate(not_ours, 5)
    for namespace in (owned, vector_orphan, "shared-table"):  # vector_orphan: upserted after a delete
        store.upsert(namespace, _vector(384))

    # Default grace (1 h): the old orphan's files go; the fresh ones may be an upload in flight,
    # and the orphaned table was written seconds ago.
    first, metadata = _orphan_counts(_run_cleanup(settings, instance))
    assert first == metadata == {"file_folders_removed": 1, "files_removed": 1, "vector_namespaces_removed": 0,
                                 "kept_within_grace": 2, "errors": 0}
    assert not old_dir.exists() and fresh_dir.exists() and owned_dir.exists() and not_ours.exists()
    assert store.count(vector_orphan) == 1

    second, _ = _orphan_counts(_run_cleanup(settings, instance, grace_seconds=0))
    assert second == {"file_folders_removed": 1, "files_removed": 1, "vector_namespaces_removed": 1,
                      "kept_within_grace": 0, "errors": 0}
    assert not fresh_dir.exists() and owned_dir.exists() and not_ours.exists()
    assert store.list_namespaces() == sorted([owned, "shared-table"])
    assert store.count(owned) == 1 and store.count(vector_orphan) == 0


def test_cleanup_removes_s3_objects_and_pinecone_namespaces_no_expert_owns(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, moto_endpoint: str, s3_bucket: str,
    s3_client: Any, pinecone_standin: PineconeStandin, instance: dg.DagsterInstance,
) -> None:
    monkeypatch.setenv("PINECONE_API_KEY", PINECONE_KEY)  # the code location passes it as an EnvVar
    settings = settings.model_copy(update={
        "file_storage": "s3", "s3_bucket": s3_bucket, "s3_prefix": "tenant-a", "aws_endpoint_url": moto_endpoint,
        "vector_store": "pinecone", "pinecone_api_key": PINECONE_KEY, "pinecone_index_host": pinecone_standin.url,
    })
    owned, file_orphan, vector_orphan = (str(uuid.uuid4()) for _ in range(3))
    _add_expert(settings, owned)
    storage, store = build_file_storage(settings), build_vector_store(settings)
    for expert_id in (owned, file_orphan):
        for n in range(3):
            storage.save(f"experts/{expert_id}/{uuid.uuid4().hex}/f{n}.txt", io.BytesIO(b"x"))
    # Another tenant's prefix, and a folder that is not an expert's, are never touched.
    s3_client.put_object(Bucket=s3_bucket, Key=f"tenant-b/experts/{file_orphan}/x/y.txt", Body=b"y")
    storage.save("experts/not-an-expert-id/x/y.txt", io.BytesIO(b"y"))
    for namespace in (owned, vector_orphan, "another-app"):
        store.upsert(namespace, _vector(8))
    pinecone_standin.namespace_page_size = 2  # the listing follows Pinecone's pagination
    assert sorted(storage.list_folders("experts/")) == sorted([owned, file_orphan, "not-an-expert-id"])

    # Pinecone keeps no write time: vectors exist only after their row committed, so an orphaned
    # namespace goes at once; the S3 orphan was written just now, so it may be an upload in flight.
    first, metadata = _orphan_counts(_run_cleanup(settings, instance))
    assert first == metadata == {"file_folders_removed": 0, "files_removed": 0, "vector_namespaces_removed": 1,
                                 "kept_within_grace": 1, "errors": 0}
    assert sorted(pinecone_standin.namespaces) == sorted([owned, "another-app"])
    assert len(pinecone_standin.requests_to("/namespaces")) == 2  # two pages

    second, _ = _orphan_counts(_run_cleanup(settings, instance, grace_seconds=0))
    assert second == {"file_folders_removed": 1, "files_removed": 3, "vector_namespaces_removed": 0,
                      "kept_within_grace": 0, "errors": 0}
    keys = sorted(o["Key"] for o in s3_client.list_objects_v2(Bucket=s3_bucket).get("Contents", []))
    assert [k for k in keys if file_orphan in k] == [f"tenant-b/experts/{file_orphan}/x/y.txt"]
    assert sum(1 for k in keys if k.startswith(f"tenant-a/experts/{owned}/")) == 3
    assert "tenant-a/experts/not-an-expert-id/x/y.txt" in keys
    assert pinecone_standin.stored_count(owned) == 1


def test_an_orphan_whose_row_commits_during_the_cleanup_is_kept(
    settings: Settings, instance: dg.DagsterInstance
) -> None:
    # An upload whose row committed after the listing (so the first read missed it) keeps its files.
    late = str(uuid.uuid4())
    folder = settings.files_dir / "experts" / late / "f1"
    folder.mkdir(parents=True)
    (folder / "a.txt").write_text("x")
    _backdate(folder.parent, 2)

    from expert_pipeline.resources.expert_catalog import ExpertCatalog

    real = ExpertCatalog.existing_experts
    calls: list[set[str]] = []

    def row_commits_after_the_first_read(catalog: Any, expert_ids: Any) -> set[str]:
        expert_ids = set(expert_ids)
        found = real(catalog, expert_ids)
        if late in expert_ids:  # the orphan cleanup's reads, not the deleted-experts sweep's
            calls.append(expert_ids)
            if len(calls) == 1:
                _add_expert(settings, late)
        return found

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ExpertCatalog, "existing_experts", row_commits_after_the_first_read)
        counts, _ = _orphan_counts(_run_cleanup(settings, instance))
    assert counts["file_folders_removed"] == 0 and folder.exists()
    assert calls == [{late}, {late}]
