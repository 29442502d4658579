"""The specification's progress endpoints, plus the progress history."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query

from expert_pipeline.core.models import utcnow
from expert_pipeline.core.stats import ingest_stats

from expert_pipeline.core.auth import visible_expert_ids
from status_api.api.deps import (
    CurrentPrincipal,
    ExpertId,
    ProgressServiceDep,
    SessionDep,
    SettingsDep,
    get_principal,
    require_visible,
)
from status_api.progress_view import present_many
from status_api.schemas import (
    ActiveProgressResponse,
    ErrorResponse,
    ProgressEventOut,
    ProgressEventsResponse,
    ProgressResponse,
    StatsResponse,
    SuccessResponse,
)

router = APIRouter(prefix="/api/experts", tags=["progress"], dependencies=[Depends(get_principal)])

NOT_FOUND = {404: {"model": ErrorResponse, "description": "No progress record for this expert"}}


def _message(expert_id: str) -> str:
    return f"No progress record for expert '{expert_id}'"


def _not_found(expert_id: str) -> HTTPException:
    return HTTPException(status_code=404, detail=_message(expert_id))


@router.get("/progress/active", response_model=ActiveProgressResponse)
def get_active_progress(
    service: ProgressServiceDep, settings: SettingsDep, principal: CurrentPrincipal
) -> ActiveProgressResponse:
    """Every progress record that is `pending` or `in_progress` (the caller's experts only)."""
    records = present_many(service.get_active_progress(visible_expert_ids(principal)), settings, service)
    return ActiveProgressResponse(count=len(records), progress_records=records)


@router.get("/progress/stats", response_model=StatsResponse)
def get_stats(
    db: SessionDep,
    principal: CurrentPrincipal,
    window_hours: Annotated[float, Query(gt=0, le=24 * 366, description="Look back this many hours")] = 24,
) -> StatsResponse:
    """Counts by status, time per stage (p50/p95), throughput and failure reasons over a window."""
    return StatsResponse(**ingest_stats(db, utcnow() - timedelta(hours=window_hours), visible_expert_ids(principal)))


@router.get("/{expert_id}/progress", response_model=ProgressResponse, responses=NOT_FOUND)
def get_progress(
    expert_id: ExpertId, service: ProgressServiceDep, settings: SettingsDep, principal: CurrentPrincipal
) -> ProgressResponse:
    """The expert's progress: stage, status, file/batch/chunk counters, percentage, times."""
    require_visible(service.db, principal, expert_id, _message(expert_id))
    record = service.get_progress(expert_id)
    if record is None:
        raise _not_found(expert_id)
    return ProgressResponse(progress=present_many([record], settings, service)[0])


@router.delete("/{expert_id}/progress", response_model=SuccessResponse, responses=NOT_FOUND)
def delete_progress(expert_id: ExpertId, service: ProgressServiceDep, principal: CurrentPrincipal) -> SuccessResponse:
    """Remove the expert's progress record and its history (cleanup)."""
    require_visible(service.db, principal, expert_id, _message(expert_id))
    if not service.delete_progress(expert_id):
        raise _not_found(expert_id)
    return SuccessResponse()


@router.get("/{expert_id}/progress/events", response_model=ProgressEventsResponse, responses=NOT_FOUND)
def get_progress_events(
    expert_id: ExpertId, service: ProgressServiceDep, principal: CurrentPrincipal
) -> ProgressEventsResponse:
    """The expert's progress history, oldest first."""
    require_visible(service.db, principal, expert_id, _message(expert_id))
    if service.get_progress(expert_id) is None:
        raise _not_found(expert_id)
    events = [ProgressEventOut.model_validate(e) for e in service.list_events(expert_id)]
    return ProgressEventsResponse(events=events)
