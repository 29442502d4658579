"""Which implementation plays each role (file storage, embedder, vector store), from settings.

Both the Dagster code location and the status API build their parts here, so the two can
never disagree about where an expert's files and vectors live. In the Dagster definitions,
secrets are given as `EnvVar`s so they never appear in the UI's resource configuration;
outside Dagster (the API) the values come from the same settings object.
"""

from __future__ import annotations

import logging
from typing import Any

import dagster as dg

from expert_pipeline.core.settings import Settings
from expert_pipeline.resources.embedder import Embedder, LocalEmbedder
from expert_pipeline.resources.expert_catalog import ExpertCatalog
from expert_pipeline.resources.file_storage import FileStorage, LocalFileStorage
from expert_pipeline.resources.ingest_settings import IngestSettings
from expert_pipeline.resources.maintenance_settings import MaintenanceSettings
from expert_pipeline.resources.progress_reporter import ProgressReporter
from expert_pipeline.resources.vector_store import LanceDBVectorStore, VectorStore

log = logging.getLogger("expert_pipeline.parts")


class PartsMisconfigured(ValueError):
    """A production part is selected but not fully configured; raised at startup."""


def _secret(value: str | None, env_name: str, in_dagster: bool) -> str:
    return dg.EnvVar(env_name) if in_dagster else (value or "")


def build_file_storage(settings: Settings, *, in_dagster: bool = False) -> FileStorage:
    if settings.file_storage == "s3":
        from expert_pipeline.resources.s3_file_storage import S3FileStorage

        return S3FileStorage(
            bucket=settings.s3_bucket or "", prefix=settings.s3_prefix,
            endpoint_url=settings.aws_endpoint_url, region_name=settings.aws_region,
        )
    return LocalFileStorage(root=str(settings.files_dir))


def build_embedder(settings: Settings, *, in_dagster: bool = False) -> Embedder:
    if settings.embedding_provider == "openai":
        from expert_pipeline.resources.openai_embedder import OpenAIEmbedder

        return OpenAIEmbedder(
            api_key=_secret(settings.openai_api_key, "OPENAI_API_KEY", in_dagster),
            base_url=settings.openai_base_url, model=settings.openai_embedding_model,
            embedding_dimensions=settings.openai_embedding_dimensions,
        )
    return LocalEmbedder()


def build_vector_store(settings: Settings, *, in_dagster: bool = False) -> VectorStore:
    if settings.vector_store == "pinecone":
        from expert_pipeline.resources.pinecone_vector_store import PineconeVectorStore

        return PineconeVectorStore(
            api_key=_secret(settings.pinecone_api_key, "PINECONE_API_KEY", in_dagster),
            index_host=settings.pinecone_index_host or "",
        )
    return LanceDBVectorStore(uri=str(settings.vectors_dir))


def build_chat_provider(settings: Settings) -> Any:
    """A ChatProvider (see expert_pipeline.chat): extractive by default, OpenAI when configured."""
    if settings.chat_provider == "openai":
        from expert_pipeline.chat.openai_chat import OpenAIChat

        return OpenAIChat(
            api_key=settings.openai_api_key or "", model=settings.openai_chat_model, base_url=settings.openai_base_url
        )
    from expert_pipeline.chat import extractive

    return extractive.answer


def check_parts(settings: Settings) -> None:
    """Fail at startup, with every problem named, if a selected part is half-configured."""
    problems: list[str] = []
    for role, build in (("file storage", build_file_storage), ("embeddings", build_embedder),
                        ("vector store", build_vector_store)):
        part = build(settings)
        check = getattr(part, "check_configuration", None)
        if check is not None:
            try:
                check()
            except ValueError as exc:
                problems.append(f"{role}: {exc}")
    if settings.chat_provider == "openai" and not settings.openai_api_key:
        problems.append("chat: CHAT_PROVIDER=openai needs OPENAI_API_KEY")
    if problems:
        raise PartsMisconfigured("Configuration is incomplete:\n  - " + "\n  - ".join(problems))


def describe_parts(settings: Settings) -> dict[str, str]:
    """One line per role saying which part is in use, for the startup log."""
    db = settings.resolved_database_url.split(":", 1)[0].split("+", 1)[0]
    return {
        "progress database": "postgresql" if db.startswith("postgres") else f"sqlite ({settings.expert_pipeline_home / 'progress.db'})",
        "dagster storage": "postgresql (DAGSTER_PG_URL)" if settings.dagster_pg_url else f"sqlite ({settings.dagster_home})",
        "file storage": f"s3://{settings.s3_bucket}/{settings.s3_prefix}" if settings.file_storage == "s3" else f"local ({settings.files_dir})",
        "embeddings": f"openai {settings.openai_embedding_model}" + (f" via {settings.openai_base_url}" if settings.openai_base_url else "")
        if settings.embedding_provider == "openai" else "local all-MiniLM-L6-v2",
        "vector store": f"pinecone ({settings.pinecone_index_host})" if settings.vector_store == "pinecone" else f"lancedb ({settings.vectors_dir})",
        "chat": f"openai {settings.openai_chat_model}" if settings.chat_provider == "openai" else "extractive",
    }


def log_parts(settings: Settings, logger: logging.Logger = log) -> None:
    for role, part in describe_parts(settings).items():
        logger.info("%s: %s", role, part)


def part_kinds(settings: Settings) -> dict[str, set[str]]:
    """Asset key -> the kinds (technologies) the parts in use give it, beside "python"."""
    return {
        "expert_files": {"s3"} if settings.file_storage == "s3" else {"filesystem"},
        "expert_embeddings": {"openai"} if settings.embedding_provider == "openai" else {"pytorch"},
        "expert_vectors": {"pinecone"} if settings.vector_store == "pinecone" else {"lancedb"},
    }


def build_resources(settings: Settings) -> dict[str, Any]:
    url = settings.resolved_database_url
    return {
        "catalog": ExpertCatalog(database_url=url),
        "progress_reporter": ProgressReporter(
            database_url=url, min_write_interval_seconds=settings.progress_min_write_interval_seconds,
            # Several beats per allowed silence, so one slow write never looks like a dead worker.
            heartbeat_interval_seconds=min(10.0, settings.dead_run_after_seconds / 4),
        ),
        "file_storage": build_file_storage(settings, in_dagster=True),
        "embedder": build_embedder(settings, in_dagster=True),
        "vector_store": build_vector_store(settings, in_dagster=True),
        "ingest_settings": IngestSettings(
            work_dir=str(settings.work_dir),
            embedding_batch_size=settings.embedding_batch_size,
            chunk_max_tokens=settings.chunk_max_tokens,
            chunk_overlap_tokens=settings.chunk_overlap_tokens,
            extraction_timeout_seconds=settings.extraction_timeout_seconds,
            extraction_memory_mb=settings.extraction_memory_mb,
        ),
        "maintenance_settings": MaintenanceSettings(
            completed_retention_days=settings.completed_retention_days,
            failed_retention_days=settings.failed_retention_days,
            dead_run_after_seconds=settings.dead_run_after_seconds,
            embedding_cache_retention_days=settings.embedding_cache_retention_days,
        ),
    }
