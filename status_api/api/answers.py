"""The answers several routes give, written once: the 404 for an expert or a progress record the
caller may not see (the same words whether it is missing or someone else's), the 409 for an
expert that is being processed, and how the OpenAPI document describes them."""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException

from expert_pipeline.core.experts_service import UploadRejected
from expert_pipeline.core.models import ACTIVE_STATUSES, ExpertProcessingProgress
from status_api.schemas import ErrorResponse


def expert_not_found(expert_id: str) -> HTTPException:
    return HTTPException(status_code=404, detail=f"No expert '{expert_id}'")


def progress_not_found(expert_id: str) -> HTTPException:
    return HTTPException(status_code=404, detail=f"No progress record for expert '{expert_id}'")


def busy(expert_id: str, status: str) -> HTTPException:
    return HTTPException(status_code=409, detail=f"Expert '{expert_id}' is already {status}")


def refuse_if_active(expert_id: str, record: ExpertProcessingProgress | None) -> None:
    """409 while the expert is queued or being processed."""
    if record is not None and record.status in ACTIVE_STATUSES:
        raise busy(expert_id, record.status)


def upload_rejected(exc: UploadRejected) -> HTTPException:
    return HTTPException(status_code=exc.status_code, detail=str(exc))


# -- how the OpenAPI document describes them ---------------------------------------------------


def json_error(description: str) -> dict[str, Any]:
    """An error answer documented as JSON whatever the route's own media type (the live
    streams answer `text/event-stream`, but their errors are `{"success": false, ...}`).
    The `$ref` resolves because the routes' own answers declare `ErrorResponse` as a model."""
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}},
    }


# FastAPI's type for an operation's documented answers.
Responses = dict[int | str, dict[str, Any]]

EXPERT_NOT_FOUND: Responses = {404: {"model": ErrorResponse, "description": "No such expert"}}
PROGRESS_NOT_FOUND: Responses = {
    404: {"model": ErrorResponse, "description": "No progress record for this expert"}
}
BUSY: Responses = {
    409: {"model": ErrorResponse, "description": "The expert is being processed or already finished"}
}
# Bodies over the limit are refused before they are read (status_api.api.upload_limits).
TOO_LARGE: Responses = {
    413: {"model": ErrorResponse, "description": "The request body is over its size limit"}
}
