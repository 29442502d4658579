"""Dagster resources for the parts in use: thin wrappers that hold the configuration (secrets as
`EnvVar`s, so the UI never shows them) and hand the assets the plain adapter from
`expert_pipeline/adapters/` for the run, closing it afterwards (Dagster's documented pattern of a
`ConfigurableResource` whose `create_resource` returns another object)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import dagster as dg

from expert_pipeline.adapters.file_storage import LocalFileStorage
from expert_pipeline.core.ports import Embedder, FileStorage, VectorStore
from expert_pipeline.core.settings import Settings
from expert_pipeline.resources.expert_catalog import ExpertCatalog
from expert_pipeline.resources.extraction_worker import ExtractionWorker
from expert_pipeline.resources.ingest_settings import IngestSettings
from expert_pipeline.resources.maintenance_settings import MaintenanceSettings
from expert_pipeline.resources.progress_reporter import ProgressReporter


class LocalFileStorageResource(dg.ConfigurableResource):
    """Uploaded files in a local directory."""

    root: str

    def create_resource(self, context: dg.InitResourceContext) -> FileStorage:
        return LocalFileStorage(root=self.root)


class S3FileStorageResource(dg.ConfigurableResource):
    """Uploaded files in S3 (credentials from boto3's own environment variables)."""

    bucket: str
    prefix: str = ""
    endpoint_url: str | None = None
    region_name: str | None = None

    def create_resource(self, context: dg.InitResourceContext) -> FileStorage:
        from expert_pipeline.adapters.s3_file_storage import S3FileStorage

        return S3FileStorage(
            bucket=self.bucket,
            prefix=self.prefix,
            endpoint_url=self.endpoint_url,
            region_name=self.region_name,
        )


class LocalEmbedderResource(dg.ConfigurableResource):
    """The local all-MiniLM-L6-v2 model (one per process, shared by runs)."""

    backend: str = "auto"  # EMBEDDING_BACKEND

    def create_resource(self, context: dg.InitResourceContext) -> Embedder:
        from expert_pipeline.adapters.embedder import LocalEmbedder  # numpy: not for the code server

        embedder = LocalEmbedder(backend=self.backend)  # type: ignore[arg-type]  # validated by Settings
        if context.log is not None:
            embedder.log_to(context.log)  # the run's log says which backend runs, at warm-up
        return embedder


class OpenAIEmbedderResource(dg.ConfigurableResource):
    """OpenAI (or any OpenAI-compatible server) embeddings."""

    api_key: str
    base_url: str | None = None
    model: str = "text-embedding-3-small"
    embedding_dimensions: int | None = None

    @contextmanager
    def yield_for_execution(self, context: dg.InitResourceContext) -> Iterator[Embedder]:
        from expert_pipeline.adapters.openai.embedder import OpenAIEmbedder

        embedder = OpenAIEmbedder(
            api_key=self.api_key,
            base_url=self.base_url,
            model=self.model,
            embedding_dimensions=self.embedding_dimensions,
        )
        try:
            yield embedder
        finally:
            embedder.close()  # the HTTP client's connections go with the run


class ServedEmbedderResource(dg.ConfigurableResource):
    """The local model held by the machine's embedding server (one per machine, not per run)."""

    base_url: str  # EMBEDDING_SERVER_URL, set by `make up`

    @contextmanager
    def yield_for_execution(self, context: dg.InitResourceContext) -> Iterator[Embedder]:
        from expert_pipeline.adapters.served_embedder import served_local_embedder

        embedder = served_local_embedder(self.base_url)
        try:
            yield embedder
        finally:
            embedder.close()


class LanceDBVectorStoreResource(dg.ConfigurableResource):
    """Vectors in an embedded LanceDB database on local disk."""

    uri: str

    def create_resource(self, context: dg.InitResourceContext) -> VectorStore:
        from expert_pipeline.adapters.vector_store import LanceDBVectorStore  # Arrow: not for the code server

        store = LanceDBVectorStore(uri=self.uri)
        store.connect_soon()  # ready by the storage stage rather than the first thing it does
        return store


class PineconeVectorStoreResource(dg.ConfigurableResource):
    """Vectors in a Pinecone index, a namespace per expert."""

    api_key: str
    index_host: str

    @contextmanager
    def yield_for_execution(self, context: dg.InitResourceContext) -> Iterator[VectorStore]:
        from expert_pipeline.adapters.pinecone_vector_store import PineconeVectorStore

        store = PineconeVectorStore(api_key=self.api_key, index_host=self.index_host)
        try:
            yield store
        finally:
            store.close()


def part_resources(settings: Settings) -> dict[str, dg.ConfigurableResource]:
    """The file storage, embedder and vector store resources for the parts `settings` selects."""
    file_storage: dg.ConfigurableResource = (
        S3FileStorageResource(
            bucket=settings.s3_bucket or "",
            prefix=settings.s3_prefix,
            endpoint_url=settings.aws_endpoint_url,
            region_name=settings.aws_region,
        )
        if settings.file_storage == "s3"
        else LocalFileStorageResource(root=str(settings.files_dir))
    )
    embedder: dg.ConfigurableResource = (
        OpenAIEmbedderResource(
            api_key=dg.EnvVar("OPENAI_API_KEY"),
            base_url=settings.openai_base_url,
            model=settings.openai_embedding_model,
            embedding_dimensions=settings.openai_embedding_dimensions,
        )
        if settings.embedding_provider == "openai"
        else ServedEmbedderResource(base_url=settings.embedding_server_url)
        if settings.embedding_server_url
        else LocalEmbedderResource(backend=settings.embedding_backend)
    )
    vector_store: dg.ConfigurableResource = (
        PineconeVectorStoreResource(
            api_key=dg.EnvVar("PINECONE_API_KEY"), index_host=settings.pinecone_index_host or ""
        )
        if settings.vector_store == "pinecone"
        else LanceDBVectorStoreResource(uri=str(settings.vectors_dir))
    )
    return {"file_storage": file_storage, "embedder": embedder, "vector_store": vector_store}


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
            database_url=url,
            min_write_interval_seconds=settings.progress_min_write_interval_seconds,
            # Several beats per allowed silence, so one slow write never looks like a dead worker.
            heartbeat_interval_seconds=min(10.0, settings.dead_run_after_seconds / 4),
        ),
        **part_resources(settings),
        "ingest_settings": IngestSettings(
            work_dir=str(settings.work_dir),
            embedding_batch_size=settings.embedding_batch_size,
            embed_while_reading=settings.embed_while_reading and settings.executor == "in_process",
            chunk_max_tokens=settings.chunk_max_tokens,
            chunk_overlap_tokens=settings.chunk_overlap_tokens,
        ),
        "extraction_worker": ExtractionWorker(
            timeout_seconds=settings.extraction_timeout_seconds, memory_mb=settings.extraction_memory_mb
        ),
        "maintenance_settings": MaintenanceSettings(
            completed_retention_days=settings.completed_retention_days,
            failed_retention_days=settings.failed_retention_days,
            dead_run_after_seconds=settings.dead_run_after_seconds,
            embedding_cache_retention_days=settings.embedding_cache_retention_days,
        ),
    }
