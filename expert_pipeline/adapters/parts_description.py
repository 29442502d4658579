"""One line per role saying which part plays it, for the startup log and the launcher's console.
Apart from the factory so that the launcher, alive as long as the product, does not import the
adapters (pyarrow alone is ~50 MB) to describe them."""

from __future__ import annotations

import logging

from expert_pipeline.adapters.encoder_choice import planned_backend
from expert_pipeline.core.settings import Settings

log = logging.getLogger("expert_pipeline.adapters.factory")


def describe_parts(settings: Settings) -> dict[str, str]:
    """One line per role saying which part is in use, for the startup log."""
    db = settings.resolved_database_url.split(":", 1)[0].split("+", 1)[0]
    return {
        "progress database": "postgresql"
        if db.startswith("postgres")
        else f"sqlite ({settings.expert_pipeline_home / 'progress.db'})",
        "dagster storage": "postgresql (DAGSTER_PG_URL)"
        if settings.dagster_pg_url
        else f"sqlite ({settings.dagster_home})",
        "file storage": f"s3://{settings.s3_bucket}/{settings.s3_prefix}"
        if settings.file_storage == "s3"
        else f"local ({settings.files_dir})",
        "embeddings": f"openai {settings.openai_embedding_model}"
        + (f" via {settings.openai_base_url}" if settings.openai_base_url else "")
        if settings.embedding_provider == "openai"
        else f"local all-MiniLM-L6-v2 served by {settings.embedding_server_url}"
        if settings.embedding_server_url
        else f"local all-MiniLM-L6-v2, encoder {planned_backend(settings.embedding_backend)}"
        + (
            f" (EMBEDDING_BACKEND={settings.embedding_backend})"
            if settings.embedding_backend != "auto"
            else ""
        ),
        "vector store": f"pinecone ({settings.pinecone_index_host})"
        if settings.vector_store == "pinecone"
        else f"lancedb ({settings.vectors_dir})",
        "chat": f"openai {settings.openai_chat_model}"
        if settings.chat_provider == "openai"
        else "extractive",
    }


def log_parts(settings: Settings, logger: logging.Logger = log) -> None:
    for role, part in describe_parts(settings).items():
        logger.info("%s: %s", role, part)
