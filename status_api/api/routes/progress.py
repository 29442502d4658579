"""The specification's progress endpoints, plus the progress history."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException

from status_api.api.deps import ExpertId, ProgressServiceDep
from status_api.schemas import (
    ActiveProgressResponse,
    ErrorResponse,
    ProgressEventOut,
    ProgressEventsResponse,
    ProgressRecord,
    ProgressResponse,
    SuccessResponse,
)

router = APIRouter(prefix="/api/experts", tags=["progress"])

NOT_FOUND = {404: {"model": ErrorResponse, "description": "No progress record for this expert"}}


def _not_found(expert_id: str) -> HTTPException:
    return HTTPException(status_code=404, detail=f"No progress record for expert '{expert_id}'")


@router.get("/progress/active", response_model=ActiveProgressResponse)
def get_active_progress(service: ProgressServiceDep) -> ActiveProgressResponse:
    """Every progress record that is `pending` or `in_progress`."""
    records = [ProgressRecord.model_validate(r) for r in service.get_active_progress()]
    return ActiveProgressResponse(count=len(records), progress_records=records)


@router.get("/{expert_id}/progress", response_model=ProgressResponse, responses=NOT_FOUND)
def get_progress(expert_id: ExpertId, service: ProgressServiceDep) -> ProgressResponse:
    """The expert's progress: stage, status, file/batch/chunk counters, percentage, times."""
    record = service.get_progress(expert_id)
    if record is None:
        raise _not_found(expert_id)
    return ProgressResponse(progress=ProgressRecord.model_validate(record))


@router.delete("/{expert_id}/progress", response_model=SuccessResponse, responses=NOT_FOUND)
def delete_progress(expert_id: ExpertId, service: ProgressServiceDep) -> SuccessResponse:
    """Remove the expert's progress record and its history (cleanup)."""
    if not service.delete_progress(expert_id):
        raise _not_found(expert_id)
    return SuccessResponse()


@router.get("/{expert_id}/progress/events", response_model=ProgressEventsResponse, responses=NOT_FOUND)
def get_progress_events(expert_id: ExpertId, service: ProgressServiceDep) -> ProgressEventsResponse:
    """The expert's progress history, oldest first."""
    if service.get_progress(expert_id) is None:
        raise _not_found(expert_id)
    events = [ProgressEventOut.model_validate(e) for e in service.list_events(expert_id)]
    return ProgressEventsResponse(events=events)
