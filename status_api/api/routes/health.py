from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from status_api.api.deps import SessionDep
from status_api.schemas import HealthResponse

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=HealthResponse, responses={503: {"model": HealthResponse}})
def healthz(db: SessionDep) -> HealthResponse | JSONResponse:
    """Whether the service can reach its progress database."""
    try:
        db.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        body = HealthResponse(status="unavailable", database=f"unreachable: {exc.__class__.__name__}")
        return JSONResponse(status_code=503, content=body.model_dump())
    return HealthResponse(status="ok", database="ok")
