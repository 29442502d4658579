from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from expert_pipeline.core.models import utcnow
from expert_pipeline.core.pipeline_health import stalled_pending
from status_api.api.deps import SessionDep, SettingsDep
from status_api.pipeline_probe import observed_state, peek
from status_api.schemas import HealthResponse, PipelineHealth

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=HealthResponse, responses={503: {"model": HealthResponse}})
def healthz(db: SessionDep, settings: SettingsDep) -> HealthResponse | JSONResponse:
    """Whether ingestion can progress: the progress database answers, and the pipeline (Dagster
    daemon, code location, sensor) is picking work up. 503 when the database is unreachable, or
    when experts wait that nothing will pick up."""
    try:
        db.execute(text("SELECT 1"))
        state = observed_state(db)
        now = utcnow()
        stalled = stalled_pending(db, now, settings.stall_after_seconds)
    except SQLAlchemyError as exc:
        body = HealthResponse(status="unavailable", database=f"unreachable: {exc.__class__.__name__}")
        return JSONResponse(status_code=503, content=body.model_dump(mode="json"))
    alive = state.alive(now)
    pipeline = PipelineHealth(
        status="ok" if alive else ("unknown" if state.seen_at is None else "down"),
        last_seen_seconds_ago=None if state.seen_at is None else round(state.age(now) or 0.0, 1),
        queued_runs=state.details.get("queued_runs"),
        stalled_experts=stalled,
    )
    # Ingestion cannot progress: the pipeline stopped, or work waits that it never took.
    if not alive and (state.seen_at is not None or stalled):
        diagnosis = peek()  # a health check never waits on the probe; it refines the next answer
        if diagnosis is not None:
            pipeline.daemon_heartbeat_age_seconds = (
                None
                if diagnosis.daemon_heartbeat_age_seconds is None
                else round(diagnosis.daemon_heartbeat_age_seconds, 1)
            )
            pipeline.code_location_error = diagnosis.code_location_error
        pipeline.reason = (
            f"No pipeline worker is taking work: {state.diagnosis}" if state.diagnosis else state.reason(now)
        )
        body = HealthResponse(status="unavailable", database="ok", pipeline=pipeline)
        return JSONResponse(status_code=503, content=body.model_dump(mode="json"))
    return HealthResponse(status="ok", database="ok", pipeline=pipeline)
