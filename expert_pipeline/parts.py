"""Which implementation plays each role (file storage, embedder, vector store), from settings.

Both the Dagster code location and the status API build their parts here, so the two can
never disagree about where an expert's files and vectors live.
"""

from __future__ import annotations

from typing import Any

from expert_pipeline.core.settings import Settings
from expert_pipeline.resources.embedder import LocalEmbedder
from expert_pipeline.resources.expert_catalog import ExpertCatalog
from expert_pipeline.resources.file_storage import LocalFileStorage
from expert_pipeline.resources.ingest_settings import IngestSettings
from expert_pipeline.resources.maintenance_settings import MaintenanceSettings
from expert_pipeline.resources.progress_reporter import ProgressReporter
from expert_pipeline.resources.vector_store import LanceDBVectorStore


def build_file_storage(settings: Settings) -> LocalFileStorage:
    return LocalFileStorage(root=str(settings.files_dir))


def build_embedder(settings: Settings) -> LocalEmbedder:
    return LocalEmbedder()


def build_vector_store(settings: Settings) -> LanceDBVectorStore:
    return LanceDBVectorStore(uri=str(settings.vectors_dir))


def build_resources(settings: Settings) -> dict[str, Any]:
    url = settings.resolved_database_url
    return {
        "catalog": ExpertCatalog(database_url=url),
        "progress_reporter": ProgressReporter(
            database_url=url, min_write_interval_seconds=settings.progress_min_write_interval_seconds
        ),
        "file_storage": build_file_storage(settings),
        "embedder": build_embedder(settings),
        "vector_store": build_vector_store(settings),
        "ingest_settings": IngestSettings(
            work_dir=str(settings.work_dir),
            embedding_batch_size=settings.embedding_batch_size,
            chunk_max_tokens=settings.chunk_max_tokens,
            chunk_overlap_tokens=settings.chunk_overlap_tokens,
        ),
        "maintenance_settings": MaintenanceSettings(
            completed_retention_days=settings.completed_retention_days,
            failed_retention_days=settings.failed_retention_days,
        ),
    }
