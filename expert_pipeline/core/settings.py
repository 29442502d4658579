"""One settings object for the whole product, read from the environment.

Every external part has an embedded default so a fresh machine runs with no accounts and
no network; production parts are selected by setting the variables documented in README.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import unquote, urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    # hide_input_in_errors: a bad SMTP_URL (or any model-level error) must not echo passwords or keys.
    model_config = SettingsConfigDict(
        env_file=None, extra="ignore", case_sensitive=False, hide_input_in_errors=True
    )

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
    # How the local model runs: auto (OpenVINO, then torch bf16 where the CPU has it, else
    # torch fp32), or one named; an unavailable choice falls back to torch-fp32, with the reason logged.
    embedding_backend: Literal["auto", "openvino", "torch-bf16", "torch-fp32"] = "auto"
    # The local model in one server process per machine (`make up` starts it: `auto`), reached
    # at EMBEDDING_SERVER_URL by runs and the API; `off`, or no URL, loads it in each process.
    embedding_server: Literal["auto", "off"] = "auto"
    embedding_server_url: str | None = None
    embedding_server_port: int = 0  # 0: any free port (the launcher passes the URL on)

    vector_store: Literal["lancedb", "pinecone"] = "lancedb"
    pinecone_api_key: str | None = None
    pinecone_index_host: str | None = None

    chat_provider: Literal["extractive", "openai"] = "extractive"
    openai_chat_model: str = "gpt-4o-mini"

    status_api_host: str = "127.0.0.1"
    status_api_port: int = 8000
    dagster_webserver_port: int = 3000
    # Set by `make up` for the status API: it submits an expert's run through the webserver the
    # moment the upload commits, rather than leaving it to the sensor's next tick (~5 s).
    dagster_graphql_url: str | None = None

    # Upload limits: generous for documents, small enough that one request cannot fill a disk.
    max_upload_file_bytes: int = 100 * 1024 * 1024
    max_upload_files: int = 100
    max_upload_total_bytes: int = 500 * 1024 * 1024

    # How the ingest job runs its steps: in the run's own process (one machine), or as Celery
    # tasks picked up by `expert-pipeline worker` processes on any number of hosts.
    executor: Literal["in_process", "celery"] = "in_process"
    celery_broker_url: str | None = None
    celery_backend_url: str | None = None
    # A task unacknowledged this long (its worker host died) is handed to another worker; it
    # must exceed the longest step, or a step still running is started a second time.
    celery_visibility_timeout_seconds: float = Field(default=3600.0, gt=0)

    # Text extraction of one file runs in a worker process with these bounds; a file beyond
    # them fails alone ("too large or too complex").
    extraction_timeout_seconds: float = Field(default=120.0, gt=0)
    extraction_memory_mb: int = Field(default=2048, ge=128)

    embedding_batch_size: int = 64
    # Chunks are embedded (into the embedding cache) while the next pages are still being read,
    # so a long document's wall time approaches its embedding time. Not with EXECUTOR=celery,
    # where embedding belongs to the embed queue's workers.
    embed_while_reading: bool = True
    chunk_max_tokens: int = 256
    chunk_overlap_tokens: int = 32
    # Progress writes are coalesced: at most one non-essential write per this many seconds.
    progress_min_write_interval_seconds: float = 0.5

    # A run with no sign of life for this long is shown as stalled.
    stall_after_seconds: float = 60.0
    # With no heartbeat for this long the run worker is taken for dead and its run failed
    # (Dagster's run retries then start it once more).
    dead_run_after_seconds: float = 180.0

    completed_retention_days: float = 30.0
    failed_retention_days: float = 90.0
    # Long enough to cover retries and re-ingests of the same documents; the vectors themselves
    # live in the vector store and are not affected.
    embedding_cache_retention_days: float = 180.0

    # Signed webhooks on completed / failed / cancelled (expert_pipeline/core/notifications/).
    # WEBHOOK_URLS is comma-separated; empty means webhooks are off. NoDecode: pydantic-settings
    # would otherwise parse a list-typed variable as JSON.
    webhook_urls: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Without a secret, deliveries are sent unsigned (no X-Expert-Pipeline-Signature header).
    webhook_secret: str | None = None
    webhook_max_attempts: int = Field(default=8, ge=1)
    webhook_timeout_seconds: float = Field(default=10.0, gt=0)

    # Completion/failure mail to the expert's owner, sent through the webhook outbox (same retries).
    # SMTP_URL: smtp://user:pass@host:port (plain), smtp+starttls://... or smtps://... (TLS).
    # A SecretStr so the password never shows in a repr or a log line.
    smtp_url: SecretStr | None = None
    notify_email_from: str | None = None

    @field_validator("expert_pipeline_home")
    @classmethod
    def _absolute_home(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @field_validator("webhook_urls", mode="before")
    @classmethod
    def _split_webhook_urls(cls, value: Any) -> Any:
        if value is None:
            return []
        if isinstance(value, str):
            value = [url.strip() for url in value.split(",") if url.strip()]
        for url in value:
            if not isinstance(url, str) or not url.startswith(("http://", "https://")):
                raise ValueError(f"WEBHOOK_URLS: {url!r} is not an http(s) URL")
        return value

    @field_validator("webhook_secret", mode="before")
    @classmethod
    def _empty_secret_is_none(cls, value: Any) -> Any:
        return value or None

    @field_validator("smtp_url", "notify_email_from", mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        return value or None

    @field_validator("smtp_url")
    @classmethod
    def _valid_smtp_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            parse_smtp_url(value.get_secret_value())  # raises naming the problem (never the password)
        return value

    @field_validator("notify_email_from")
    @classmethod
    def _valid_from(cls, value: str | None) -> str | None:
        if value is not None and ("@" not in value or any(c in value for c in "\r\n")):
            raise ValueError(f"NOTIFY_EMAIL_FROM: {value!r} is not an email address")
        return value

    @model_validator(mode="after")
    def _mail_fully_configured(self) -> Settings:
        # Half-configured mail would fail every delivery; refuse at startup instead.
        if self.smtp_url is not None and not self.notify_email_from:
            raise ValueError(
                "SMTP_URL is set but NOTIFY_EMAIL_FROM is not: set the sender address for notifications"
            )
        return self

    @property
    def smtp_server(self) -> SmtpServer | None:
        """Where notification mail goes, or None when email notifications are off."""
        return None if self.smtp_url is None else parse_smtp_url(self.smtp_url.get_secret_value())

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return normalize_database_url(self.database_url)
        return f"sqlite:///{self.expert_pipeline_home / 'progress.db'}"

    @property
    def resolved_dagster_pg_url(self) -> str | None:
        """DAGSTER_PG_URL with our driver spelled out: dagster-postgres's NOTIFY needs psycopg2,
        and SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3."""
        return normalize_database_url(self.dagster_pg_url) if self.dagster_pg_url else None

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


@dataclass(frozen=True, repr=False)
class SmtpServer:
    """A parsed SMTP_URL. `security`: "plain" (smtp://), "starttls" (smtp+starttls://), "tls" (smtps://)."""

    security: Literal["plain", "starttls", "tls"]
    host: str
    port: int
    username: str | None
    password: str | None

    def __repr__(self) -> str:  # never the password
        return f"SmtpServer({self.security}, {self.host}:{self.port}, user={self.username!r})"


_SMTP_SCHEMES: dict[str, tuple[Literal["plain", "starttls", "tls"], int]] = {
    "smtp": ("plain", 25),
    "smtp+starttls": ("starttls", 587),
    "smtps": ("tls", 465),
}


def parse_smtp_url(url: str) -> SmtpServer:
    """`smtp[s|+starttls]://[user[:password]@]host[:port]`; user and password may be %-encoded."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme not in _SMTP_SCHEMES:
        raise ValueError(
            f"SMTP_URL: unsupported scheme {parts.scheme!r} (use smtp://, smtp+starttls:// or smtps://)"
        )
    security, default_port = _SMTP_SCHEMES[scheme]
    try:
        port = parts.port or default_port
    except ValueError:
        raise ValueError("SMTP_URL: the port is not a number") from None
    if not parts.hostname:
        raise ValueError("SMTP_URL: no host (expected smtp://user:pass@host:port)")
    return SmtpServer(
        security=security,
        host=parts.hostname,
        port=port,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
    )


def normalize_database_url(url: str) -> str:
    """Accept every PostgreSQL URL form people paste (postgres://, postgresql://,
    postgresql+psycopg://, postgresql+psycopg2://) and use one driver, psycopg2, for all:
    Dagster's storage and our LISTEN both need it."""
    url = url.strip()
    for prefix in ("postgres://", "postgresql://", "postgresql+psycopg://", "postgresql+psycopg2://"):
        if url.startswith(prefix):
            return "postgresql+psycopg2://" + url[len(prefix) :]
    return url


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
