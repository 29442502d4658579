"""Which implementation plays each role (file storage, embedder, vector store, chat), from
settings: the one factory of plain adapters. The status API and the CLI use it directly; the
Dagster resources (`expert_pipeline/resources/parts.py`) wrap the same adapters, so the two can
never disagree about where an expert's files and vectors live. No Dagster import here."""

from __future__ import annotations

import logging
from typing import Any

from expert_pipeline.adapters.file_storage import LocalFileStorage
from expert_pipeline.core.ports import Embedder, FileStorage, VectorStore
from expert_pipeline.core.settings import Settings

log = logging.getLogger("expert_pipeline.adapters.factory")


class PartsMisconfigured(ValueError):
    """A production part is selected but not fully configured; raised at startup."""


def build_file_storage(settings: Settings) -> FileStorage:
    if settings.file_storage == "s3":
        from expert_pipeline.adapters.s3_file_storage import S3FileStorage

        return S3FileStorage(
            bucket=settings.s3_bucket or "",
            prefix=settings.s3_prefix,
            endpoint_url=settings.aws_endpoint_url,
            region_name=settings.aws_region,
        )
    return LocalFileStorage(root=str(settings.files_dir))


def build_embedder(settings: Settings) -> Embedder:
    if settings.embedding_provider == "openai":
        from expert_pipeline.adapters.openai.embedder import OpenAIEmbedder

        return OpenAIEmbedder(
            api_key=settings.openai_api_key or "",
            base_url=settings.openai_base_url,
            model=settings.openai_embedding_model,
            embedding_dimensions=settings.openai_embedding_dimensions,
        )
    if settings.embedding_server_url:
        from expert_pipeline.adapters.served_embedder import served_local_embedder

        return served_local_embedder(settings.embedding_server_url)
    from expert_pipeline.adapters.embedder import LocalEmbedder

    return LocalEmbedder(backend=settings.embedding_backend)


def build_vector_store(settings: Settings) -> VectorStore:
    if settings.vector_store == "pinecone":
        from expert_pipeline.adapters.pinecone_vector_store import PineconeVectorStore

        return PineconeVectorStore(
            api_key=settings.pinecone_api_key or "",
            index_host=settings.pinecone_index_host or "",
        )
    from expert_pipeline.adapters.vector_store import LanceDBVectorStore

    return LanceDBVectorStore(uri=str(settings.vectors_dir))


def build_chat_provider(settings: Settings) -> Any:
    """A ChatProvider (see expert_pipeline.chat): extractive by default, OpenAI when configured."""
    if settings.chat_provider == "openai":
        from expert_pipeline.chat.openai_chat import OpenAIChat

        return OpenAIChat(
            api_key=settings.openai_api_key or "",
            model=settings.openai_chat_model,
            base_url=settings.openai_base_url,
        )
    from expert_pipeline.chat import extractive

    return extractive.answer


def check_parts(settings: Settings) -> None:
    """Fail at startup, with every problem named, if a selected part is half-configured."""
    problems: list[str] = []
    # Only the hosted parts have settings to miss; the embedded defaults are not even imported,
    # so a process that never uses one (the status API, for LanceDB) does not hold it.
    for role, build, hosted in (
        ("file storage", build_file_storage, settings.file_storage == "s3"),
        ("embeddings", build_embedder, settings.embedding_provider == "openai"),
        ("vector store", build_vector_store, settings.vector_store == "pinecone"),
    ):
        if not hosted:
            continue
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
