"""Creating, listing and deleting experts."""

from __future__ import annotations

import logging
import re
from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, UploadFile, status

from expert_pipeline.core import experts_service
from expert_pipeline.core.auth import visible_expert_ids
from expert_pipeline.core.experts_service import Upload, UploadLimits, UploadRejected
from expert_pipeline.core.models import ACTIVE_STATUSES, Expert, ExpertFile, ExpertProcessingProgress
from expert_pipeline.core.progress_service import ExpertProcessingProgressService
from expert_pipeline.core.settings import Settings
from expert_pipeline.text.extraction import SUPPORTED_EXTENSIONS
from status_api.api.answers import (
    BUSY,
    EXPERT_NOT_FOUND,
    PROGRESS_NOT_FOUND,
    Responses,
    busy,
    expert_not_found,
    progress_not_found,
    refuse_if_active,
    upload_rejected,
)
from status_api.api.deps import (
    CurrentPrincipal,
    ExpertId,
    FileStorageDep,
    ProgressServiceDep,
    RunTriggerDep,
    SessionDep,
    SettingsDep,
    VectorStoreDep,
    get_principal,
    require_expert,
    require_progress_visible,
)
from status_api.progress_view import present_one
from status_api.run_trigger import RunTrigger
from status_api.schemas import (
    ErrorResponse,
    ExpertCreatedResponse,
    ExpertListResponse,
    ExpertOut,
    ExpertResponse,
    ExpertWithProgress,
    ProgressResponse,
    SuccessResponse,
)

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api/experts", tags=["experts"], dependencies=[Depends(get_principal)])

REJECTIONS: Responses = {
    400: {"model": ErrorResponse, "description": "Missing name or files"},
    413: {
        "model": ErrorResponse,
        "description": "Too many or too large files, or a body over the upload limit",
    },
    415: {"model": ErrorResponse, "description": "Unsupported file type"},
}

# What the upload forms accept, said in the OpenAPI document as the server checks it
# (`experts_service.validate_request`): a name with a visible character and no control or
# text-direction character (else 400 / 422), and files whose names end in a supported extension
# (else 415). The patterns document; the service's checks keep their own status codes.
_NOT_PLAIN_TEXT = r"\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"
NAME_PATTERN = rf"^[^{_NOT_PLAIN_TEXT}]*[^\s{_NOT_PLAIN_TEXT}][^{_NOT_PLAIN_TEXT}]*$"
AGENT_ID_PATTERN = rf"^[^{_NOT_PLAIN_TEXT}]*$"
EXTENSIONS = sorted(SUPPORTED_EXTENSIONS)
FILES_RULE = f"file names must end in {', '.join(EXTENSIONS)} (any case); other types are refused with 415"


def _any_case(text: str) -> str:
    return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else re.escape(c) for c in text)


UPLOAD_ENCODING = {
    "requestBody": {
        "content": {
            "multipart/form-data": {
                "encoding": {
                    "files": {
                        "headers": {
                            "Content-Disposition": {
                                "description": f"Each part carries its file name: {FILES_RULE}",
                                "schema": {
                                    "type": "string",
                                    "pattern": r'filename="[^"]*\.('
                                    + "|".join(_any_case(e.lstrip(".")) for e in EXTENSIONS)
                                    + ')"',
                                },
                                "example": 'form-data; name="files"; filename="notes.txt"',
                            },
                        }
                    }
                }
            }
        }
    },
}


def _expert_out(expert: Expert, files: list[ExpertFile]) -> ExpertOut:
    return ExpertOut.model_validate({**_columns(expert), "files": files})


def _limits(settings: Settings) -> UploadLimits:
    return UploadLimits(
        max_files=settings.max_upload_files,
        max_file_bytes=settings.max_upload_file_bytes,
        max_total_bytes=settings.max_upload_total_bytes,
        allowed_extensions=SUPPORTED_EXTENSIONS,
    )


def _with_progress(
    expert: Expert,
    files: list[ExpertFile],
    record: ExpertProcessingProgress | None,
    settings: Settings,
    service: ExpertProcessingProgressService,
) -> ExpertWithProgress:
    progress = present_one(record, settings, service) if record else None
    ready = experts_service.ready_to_chat(record, files)
    return ExpertWithProgress.model_validate(
        {**_columns(expert), "files": files, "progress": progress, "ready": ready}
    )


def _columns(expert: Expert) -> dict[str, object]:
    return {
        "id": expert.id,
        "name": expert.name,
        "agent_id": expert.agent_id,
        "created_at": expert.created_at,
    }


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=ExpertCreatedResponse,
    responses=REJECTIONS,
    openapi_extra=UPLOAD_ENCODING,
)
def create_expert(
    db: SessionDep,
    service: ProgressServiceDep,
    settings: SettingsDep,
    storage: FileStorageDep,
    principal: CurrentPrincipal,
    trigger: RunTriggerDep,
    name: Annotated[
        str,
        Form(
            description="The expert's name",
            min_length=1,
            max_length=200,
            json_schema_extra={"pattern": NAME_PATTERN},
        ),
    ],
    files: Annotated[
        list[UploadFile], File(description=f"One or more documents; {FILES_RULE}", min_length=1)
    ],
    agent_id: Annotated[
        str | None, Form(max_length=128, json_schema_extra={"pattern": AGENT_ID_PATTERN})
    ] = None,
) -> ExpertCreatedResponse:
    """Store the files, create the expert and its `pending` progress row; the pipeline starts it."""
    uploads = [Upload(filename=f.filename or "", stream=f.file) for f in files]
    try:
        expert, progress = experts_service.create_expert(
            db,
            storage,
            name=name,
            uploads=uploads,
            limits=_limits(settings),
            agent_id=agent_id or None,
            owner=principal.owner,
        )
    except UploadRejected as exc:
        raise upload_rejected(exc) from exc
    if trigger is not None:
        trigger.request(expert.id)
    stored = experts_service.files_of(db, [expert.id])[expert.id]
    return ExpertCreatedResponse(
        expert=_expert_out(expert, stored), progress=present_one(progress, settings, service)
    )


@router.get("", response_model=ExpertListResponse)
def list_experts(
    db: SessionDep, service: ProgressServiceDep, settings: SettingsDep, principal: CurrentPrincipal
) -> ExpertListResponse:
    """Every expert the caller may see, with its files and progress, newest first."""
    experts = experts_service.list_experts(db, visible_expert_ids(principal))
    files = experts_service.files_of(db, [e.id for e in experts])
    items = [_with_progress(e, files[e.id], service.get_progress(e.id), settings, service) for e in experts]
    return ExpertListResponse(count=len(items), experts=items)


@router.get("/{expert_id}", response_model=ExpertResponse, responses=EXPERT_NOT_FOUND)
def get_expert(
    expert_id: ExpertId,
    db: SessionDep,
    service: ProgressServiceDep,
    settings: SettingsDep,
    principal: CurrentPrincipal,
) -> ExpertResponse:
    expert = require_expert(db, expert_id, principal)
    files = experts_service.files_of(db, [expert_id])[expert_id]
    return ExpertResponse(
        expert=_with_progress(expert, files, service.get_progress(expert_id), settings, service)
    )


@router.post("/{expert_id}/cancel", response_model=ProgressResponse, responses={**PROGRESS_NOT_FOUND, **BUSY})
def cancel_expert(
    expert_id: ExpertId, service: ProgressServiceDep, settings: SettingsDep, principal: CurrentPrincipal
) -> ProgressResponse:
    """Stop the expert's processing. The run stops at its next batch; the row says `cancelled`."""
    require_progress_visible(service.db, principal, expert_id)
    record = service.get_progress(expert_id)
    if record is None:
        raise progress_not_found(expert_id)
    if record.status not in ACTIVE_STATUSES:
        raise busy(expert_id, record.status)
    record = service.mark_cancelled(expert_id, "Cancelled by user")
    return ProgressResponse(progress=present_one(record, settings, service))


def _requeue(
    db: SessionDep, service: ExpertProcessingProgressService, expert: Expert, trigger: RunTrigger | None
) -> ExpertProcessingProgress:
    refuse_if_active(expert.id, service.get_progress(expert.id))
    files = experts_service.files_of(db, [expert.id])[expert.id]
    record = service.create_progress_record(
        expert_id=expert.id, agent_id=expert.agent_id, total_files=len(files)
    )
    if trigger is not None:
        trigger.request(expert.id)
    return record


@router.post(
    "/{expert_id}/retry",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=ProgressResponse,
    responses={**EXPERT_NOT_FOUND, **BUSY},
)
def retry_expert(
    expert_id: ExpertId,
    db: SessionDep,
    service: ProgressServiceDep,
    settings: SettingsDep,
    principal: CurrentPrincipal,
    trigger: RunTriggerDep,
) -> ProgressResponse:
    """Queue the expert again: failed and unfinished files are processed; indexed files are kept,
    and chunks embedded before are taken from the embedding cache, not paid for again."""
    record = _requeue(db, service, require_expert(db, expert_id, principal), trigger)
    return ProgressResponse(progress=present_one(record, settings, service))


@router.post(
    "/{expert_id}/files",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=ExpertCreatedResponse,
    responses={**EXPERT_NOT_FOUND, **BUSY, **REJECTIONS},
    openapi_extra=UPLOAD_ENCODING,
)
def add_files(
    expert_id: ExpertId,
    db: SessionDep,
    service: ProgressServiceDep,
    settings: SettingsDep,
    storage: FileStorageDep,
    principal: CurrentPrincipal,
    trigger: RunTriggerDep,
    files: Annotated[
        list[UploadFile], File(description=f"One or more documents to add; {FILES_RULE}", min_length=1)
    ],
) -> ExpertCreatedResponse:
    """Add documents to an expert; only the new ones are ingested."""
    expert = require_expert(db, expert_id, principal)
    refuse_if_active(expert_id, service.get_progress(expert_id))
    uploads = [Upload(filename=f.filename or "", stream=f.file) for f in files]
    try:
        experts_service.add_files(db, storage, expert, uploads=uploads, limits=_limits(settings))
    except UploadRejected as exc:
        raise upload_rejected(exc) from exc
    record = _requeue(db, service, expert, trigger)
    stored = experts_service.files_of(db, [expert_id])[expert_id]
    return ExpertCreatedResponse(
        expert=_expert_out(expert, stored), progress=present_one(record, settings, service)
    )


@router.delete("/{expert_id}", response_model=SuccessResponse, responses=EXPERT_NOT_FOUND)
def delete_expert(
    expert_id: ExpertId,
    db: SessionDep,
    storage: FileStorageDep,
    vector_store: VectorStoreDep,
    principal: CurrentPrincipal,
) -> SuccessResponse:
    """Remove the expert with its files, vectors, progress and history."""
    require_expert(db, expert_id, principal)
    if not experts_service.delete_expert_rows(db, expert_id):
        raise expert_not_found(expert_id)
    # The rows are gone first so nothing can reach the expert; stored data follows. If this
    # part fails, the daily cleanup job removes what is left.
    try:
        storage.delete_prefix(experts_service.expert_prefix(expert_id))
        vector_store.delete_namespace(expert_id)
    except Exception:
        log.warning(
            "could not remove stored data of deleted expert %s; cleanup will retry", expert_id, exc_info=True
        )
    return SuccessResponse()
