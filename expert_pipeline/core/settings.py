"""One settings object for the whole product, read from the environment.

Every external part has an embedded default so a fresh machine runs with no accounts and
no network; production parts are selected by setting the variables documented in README.md.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=None, extra="ignore", case_sensitive=False)

    expert_pipeline_home: Path = Field(default=Path("./.expert_pipeline"))
    database_url: str | None = None
    dagster_pg_url: str | None = None

    # Which part plays each role: the embedded default, or the production service.
    file_storage: Literal["local", "s3"] = "local"
    s3_bucket: str | None = None
    s3_prefix: str = ""
    aws_endpoint_url: str | None = None
    aws_region: str | None = None

    embedding_provider: Literal["local", "openai"] = "local"
    openai_api_key: str | None = None
    openai_base_url: str | None = None
    openai_embedding_model: str = "text-embedding-3-small"
    openai_embedding_dimensions: int | None = None

    vector_store: Literal["lancedb", "pinecone"] = "lancedb"
    pinecone_api_key: str | None = None
    pinecone_index_host: str | None = None

    chat_provider: Literal["extractive", "openai"] = "extractive"
    openai_chat_model: str = "gpt-4o-mini"

    status_api_host: str = "127.0.0.1"
    status_api_port: int = 8000
    dagster_webserver_port: int = 3000

    # Upload limits: generous for documents, small enough that one request cannot fill a disk.
    max_upload_file_bytes: int = 100 * 1024 * 1024
    max_upload_files: int = 100
    max_upload_total_bytes: int = 500 * 1024 * 1024

    embedding_batch_size: int = 64
    chunk_max_tokens: int = 256
    chunk_overlap_tokens: int = 32
    # Progress writes are coalesced: at most one non-essential write per this many seconds.
    progress_min_write_interval_seconds: float = 0.5

    completed_retention_days: float = 30.0
    failed_retention_days: float = 90.0

    @field_validator("expert_pipeline_home")
    @classmethod
    def _absolute_home(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return normalize_database_url(self.database_url)
        return f"sqlite:///{self.expert_pipeline_home / 'progress.db'}"

    @property
    def files_dir(self) -> Path:
        return self.expert_pipeline_home / "files"

    @property
    def work_dir(self) -> Path:
        return self.expert_pipeline_home / "work"

    @property
    def vectors_dir(self) -> Path:
        return self.expert_pipeline_home / "vectors"

    @property
    def dagster_home(self) -> Path:
        return self.expert_pipeline_home / "dagster"

    def ensure_dirs(self) -> None:
        for path in (self.expert_pipeline_home, self.files_dir, self.work_dir, self.vectors_dir):
            path.mkdir(parents=True, exist_ok=True)


def normalize_database_url(url: str) -> str:
    """Accept the URLs people paste (postgres://, postgresql://) and pick our driver."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg2://" + url[len("postgresql://") :]
    return url


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
