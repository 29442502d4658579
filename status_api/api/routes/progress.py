"""The specification's progress endpoints, plus the progress history."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query

from expert_pipeline.core.models import utcnow
from expert_pipeline.core.stats import ingest_stats

from status_api.api.deps import ExpertId, ProgressServiceDep, SessionDep, SettingsDep
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

router = APIRouter(prefix="/api/experts", tags=["progress"])

NOT_FOUND = {404: {"model": ErrorResponse, "description": "No progress record for this expert"}}


def _not_found(expert_id: str) -> HTTPException:
    return HTTPException(status_code=404, detail=f"No progress record for expert '{expert_id}'")


@router.get("/progress/active", response_model=ActiveProgressResponse)
def get_active_progress(service: ProgressServiceDep, settings: SettingsDep) -> ActiveProgressResponse:
    """Every progress record that is `pending` or `in_progress`."""
    records = present_many(service.get_active_progress(), settings, service)
    return ActiveProgressResponse(count=len(records), progress_records=records)


@router.get("/progress/stats", response_model=StatsResponse)
def get_stats(
    db: SessionDep,
    window_hours: Annotated[float, Query(gt=0, le=24 * 366, description="Look back this many hours")] = 24,
) -> StatsResponse:
    """Counts by status, time per stage (p50/p95), throughput and failure reasons over a window."""
    return StatsResponse(**ingest_stats(db, utcnow() - timedelta(hours=window_hours)))


@router.get("/{expert_id}/progress", response_model=ProgressResponse, responses=NOT_FOUND)
def get_progress(expert_id: ExpertId, service: ProgressServiceDep, settings: SettingsDep) -> ProgressResponse:
    """The expert's progress: stage, status, file/batch/chunk counters, percentage, times."""
    record = service.get_progress(expert_id)
    if record is None:
        raise _not_found(expert_id)
    return ProgressResponse(progress=present_many([record], settings, service)[0])


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
