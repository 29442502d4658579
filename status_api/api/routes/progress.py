"""The specification's progress endpoints, plus the progress history."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from expert_pipeline.core.auth import can_see, visible_expert_ids
from expert_pipeline.core.models import utcnow
from expert_pipeline.core.progress_service import OPERATOR_DETAIL, ExpertProcessingProgressService
from expert_pipeline.core.stats import ingest_stats
from status_api.api.answers import PROGRESS_NOT_FOUND, progress_not_found
from status_api.api.deps import (
    CurrentPrincipal,
    ExpertId,
    ProgressServiceDep,
    SessionDep,
    SettingsDep,
    _bearer,
    get_principal,
    require_progress_visible,
    resolve_principal,
)
from status_api.progress_view import present_many, present_one
from status_api.schemas import (
    ActiveProgressResponse,
    ProgressEventOut,
    ProgressEventsResponse,
    ProgressResponse,
    StatsResponse,
    SuccessResponse,
)

# What status_api.main includes. Every route in it is authenticated: those on `_authenticated`
# by its router dependency; GET /{expert_id}/progress, the one dashboards poll, by its own
# dependency, which authenticates and reads in a single worker-thread hop (`_caller_progress`).
router = APIRouter(prefix="/api/experts", tags=["progress"])
_authenticated = APIRouter(dependencies=[Depends(get_principal)])
_polled = APIRouter()


@_authenticated.get("/progress/active", response_model=ActiveProgressResponse)
def get_active_progress(
    service: ProgressServiceDep, settings: SettingsDep, principal: CurrentPrincipal
) -> ActiveProgressResponse:
    """Every progress record that is `pending` or `in_progress` (the caller's experts only)."""
    records = present_many(service.get_active_progress(visible_expert_ids(principal)), settings, service)
    return ActiveProgressResponse(count=len(records), progress_records=records)


@_authenticated.get("/progress/stats", response_model=StatsResponse)
def get_stats(
    db: SessionDep,
    principal: CurrentPrincipal,
    window_hours: Annotated[float, Query(gt=0, le=24 * 366, description="Look back this many hours")] = 24,
) -> StatsResponse:
    """Counts by status, time per stage (p50/p95), throughput and failure reasons over a window."""
    return StatsResponse(
        **ingest_stats(db, utcnow() - timedelta(hours=window_hours), visible_expert_ids(principal))
    )


async def _caller_progress(request: Request) -> ProgressResponse | None:
    """GET /{expert_id}/progress's database work, the caller's authentication included, in one
    worker-thread hop and one session, where `get_principal` and a plain `def` route took two
    of each. This is the endpoint dashboards poll, and under load a hop (a round trip through
    the thread pool, the event loop and the worker taking turns with the GIL) costs as much as
    the reads (bench/api_load.py). None: no record the caller may see.

    A dependency, so that it runs where `get_principal` did, before the path is validated: a
    bad token is still a 401 whatever the id. Hence also no 404 raised here: an id that fails
    validation must still get its 422 (from FastAPI, after this returns).
    """
    token = _bearer(request)
    expert_id: str = request.path_params["expert_id"]
    settings = request.app.state.settings
    engine = request.app.state.engine

    def read() -> ProgressResponse | None:
        with Session(engine, expire_on_commit=False) as db:
            principal = resolve_principal(db, token)
            if not can_see(db, principal, expert_id):
                return None
            service = ExpertProcessingProgressService(db)
            record = service.get_progress(expert_id)
            if record is None:
                return None
            return ProgressResponse(progress=present_one(record, settings, service))

    return await run_in_threadpool(read)


@_polled.get("/{expert_id}/progress", response_model=ProgressResponse, responses=PROGRESS_NOT_FOUND)
async def get_progress(
    expert_id: ExpertId, found: Annotated[ProgressResponse | None, Depends(_caller_progress)]
) -> ProgressResponse:
    """The expert's progress: stage, status, file/batch/chunk counters, percentage, times."""
    if found is None:
        raise progress_not_found(expert_id)
    return found


@_authenticated.delete("/{expert_id}/progress", response_model=SuccessResponse, responses=PROGRESS_NOT_FOUND)
def delete_progress(
    expert_id: ExpertId, service: ProgressServiceDep, principal: CurrentPrincipal
) -> SuccessResponse:
    """Remove the expert's progress record and its history (cleanup)."""
    require_progress_visible(service.db, principal, expert_id)
    if not service.delete_progress(expert_id):
        raise progress_not_found(expert_id)
    return SuccessResponse()


@_authenticated.get(
    "/{expert_id}/progress/events", response_model=ProgressEventsResponse, responses=PROGRESS_NOT_FOUND
)
def get_progress_events(
    expert_id: ExpertId, service: ProgressServiceDep, principal: CurrentPrincipal
) -> ProgressEventsResponse:
    """The expert's progress history, oldest first."""
    require_progress_visible(service.db, principal, expert_id)
    if service.get_progress(expert_id) is None:
        raise progress_not_found(expert_id)
    events = [ProgressEventOut.model_validate(e) for e in service.list_events(expert_id)]
    if not principal.operator:
        # Raw detail (exception text, storage keys) is the operators'; users get the message.
        for event in events:
            event.data.pop(OPERATOR_DETAIL, None)
    return ProgressEventsResponse(events=events)


router.include_router(_polled)
router.include_router(_authenticated)
