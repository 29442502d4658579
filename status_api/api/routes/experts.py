"""Creating, listing and deleting experts."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, File, Form, HTTPException, UploadFile, status

from expert_pipeline.core import experts_service
from expert_pipeline.core.experts_service import Upload, UploadLimits, UploadRejected
from expert_pipeline.core.models import Expert, ExpertFile
from expert_pipeline.text.extraction import SUPPORTED_EXTENSIONS
from status_api.api.deps import (
    ExpertId,
    FileStorageDep,
    ProgressServiceDep,
    SessionDep,
    SettingsDep,
    VectorStoreDep,
)
from status_api.schemas import (
    ErrorResponse,
    ExpertCreatedResponse,
    ExpertListResponse,
    ExpertOut,
    ExpertResponse,
    ExpertWithProgress,
    ProgressRecord,
    SuccessResponse,
)

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api/experts", tags=["experts"])

REJECTIONS = {
    400: {"model": ErrorResponse, "description": "Missing name or files"},
    413: {"model": ErrorResponse, "description": "Too many or too large files"},
    415: {"model": ErrorResponse, "description": "Unsupported file type"},
}
NOT_FOUND = {404: {"model": ErrorResponse, "description": "No such expert"}}


def _expert_out(expert: Expert, files: list[ExpertFile]) -> ExpertOut:
    return ExpertOut.model_validate({**_columns(expert), "files": files})


def _columns(expert: Expert) -> dict[str, object]:
    return {"id": expert.id, "name": expert.name, "agent_id": expert.agent_id, "created_at": expert.created_at}


@router.post("", status_code=status.HTTP_201_CREATED, response_model=ExpertCreatedResponse, responses=REJECTIONS)
def create_expert(
    db: SessionDep,
    settings: SettingsDep,
    storage: FileStorageDep,
    name: Annotated[str, Form(description="The expert's name", max_length=200)],
    files: Annotated[list[UploadFile], File(description="One or more documents")],
    agent_id: Annotated[str | None, Form(max_length=128)] = None,
) -> ExpertCreatedResponse:
    """Store the files, create the expert and its `pending` progress row; the pipeline starts it."""
    limits = UploadLimits(
        max_files=settings.max_upload_files,
        max_file_bytes=settings.max_upload_file_bytes,
        max_total_bytes=settings.max_upload_total_bytes,
        allowed_extensions=SUPPORTED_EXTENSIONS,
    )
    uploads = [Upload(filename=f.filename or "", stream=f.file) for f in files]
    try:
        expert, progress = experts_service.create_expert(
            db, storage, name=name, uploads=uploads, limits=limits, agent_id=agent_id or None
        )
    except UploadRejected as exc:
        raise HTTPException(status_code=exc.status_code, detail=str(exc)) from exc
    stored = experts_service.files_of(db, [expert.id])[expert.id]
    return ExpertCreatedResponse(expert=_expert_out(expert, stored), progress=ProgressRecord.model_validate(progress))


@router.get("", response_model=ExpertListResponse)
def list_experts(db: SessionDep, service: ProgressServiceDep) -> ExpertListResponse:
    """Every expert with its files and progress, newest first."""
    experts = experts_service.list_experts(db)
    files = experts_service.files_of(db, [e.id for e in experts])
    items = []
    for expert in experts:
        record = service.get_progress(expert.id)
        items.append(
            ExpertWithProgress.model_validate(
                {**_columns(expert), "files": files[expert.id],
                 "progress": ProgressRecord.model_validate(record) if record else None}
            )
        )
    return ExpertListResponse(count=len(items), experts=items)


@router.get("/{expert_id}", response_model=ExpertResponse, responses=NOT_FOUND)
def get_expert(expert_id: ExpertId, db: SessionDep, service: ProgressServiceDep) -> ExpertResponse:
    expert = experts_service.get_expert(db, expert_id)
    if expert is None:
        raise HTTPException(status_code=404, detail=f"No expert '{expert_id}'")
    record = service.get_progress(expert_id)
    files = experts_service.files_of(db, [expert_id])[expert_id]
    return ExpertResponse(
        expert=ExpertWithProgress.model_validate(
            {**_columns(expert), "files": files,
             "progress": ProgressRecord.model_validate(record) if record else None}
        )
    )


@router.delete("/{expert_id}", response_model=SuccessResponse, responses=NOT_FOUND)
def delete_expert(
    expert_id: ExpertId, db: SessionDep, storage: FileStorageDep, vector_store: VectorStoreDep
) -> SuccessResponse:
    """Remove the expert with its files, vectors, progress and history."""
    if not experts_service.delete_expert_rows(db, expert_id):
        raise HTTPException(status_code=404, detail=f"No expert '{expert_id}'")
    # The rows are gone first so nothing can reach the expert; stored data follows. If this
    # part fails, the daily cleanup job removes what is left.
    try:
        storage.delete_prefix(experts_service.expert_prefix(expert_id))
        vector_store.delete_namespace(expert_id)
    except Exception:  # noqa: BLE001 - the cleanup job retries
        log.warning("could not remove stored data of deleted expert %s; cleanup will retry", expert_id, exc_info=True)
    return SuccessResponse()
