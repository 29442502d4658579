"""Shared request dependencies: settings and a database session."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Protocol

from fastapi import Depends, Path, Request
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from expert_pipeline.core.experts_service import ExpertFileStorage
from expert_pipeline.core.progress_service import ExpertProcessingProgressService
from expert_pipeline.core.settings import Settings

class VectorStoreLike(Protocol):
    def delete_namespace(self, namespace: str) -> None: ...


# Ids are opaque but bounded: letters, digits and a few separators, as in the spec's examples
# ("expert-uuid", "expert-123"). Anything else is a client error, not a lookup.
EXPERT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"

ExpertId = Annotated[
    str,
    Path(pattern=EXPERT_ID_PATTERN, max_length=128, description="The expert's id", examples=["expert-123"]),
]


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_engine(request: Request) -> Engine:
    return request.app.state.engine


def get_db(engine: Annotated[Engine, Depends(get_engine)]) -> Iterator[Session]:
    with Session(engine, expire_on_commit=False) as session:
        yield session


SessionDep = Annotated[Session, Depends(get_db)]
SettingsDep = Annotated[Settings, Depends(get_settings)]


def get_progress_service(db: SessionDep) -> ExpertProcessingProgressService:
    return ExpertProcessingProgressService(db)


ProgressServiceDep = Annotated[ExpertProcessingProgressService, Depends(get_progress_service)]


def _part(request: Request, role: str) -> object:
    """File storage and vector store are built once per app from settings (lazily, as they
    pull in the pipeline's libraries, which the progress endpoints do not need)."""
    parts = request.app.state.__dict__.setdefault("parts", {})
    if role not in parts:
        from expert_pipeline import parts as builders

        parts[role] = getattr(builders, f"build_{role}")(request.app.state.settings)
    return parts[role]


def get_file_storage(request: Request) -> ExpertFileStorage:
    return _part(request, "file_storage")  # type: ignore[return-value]


def get_vector_store(request: Request) -> VectorStoreLike:
    return _part(request, "vector_store")  # type: ignore[return-value]


FileStorageDep = Annotated[ExpertFileStorage, Depends(get_file_storage)]
VectorStoreDep = Annotated[VectorStoreLike, Depends(get_vector_store)]
