"""What the API knows about its own vocabulary: the words for stages and statuses.

Public (no token) and unchanging while the server runs: the dashboard fetches it before sign-in.
"""

from __future__ import annotations

from fastapi import APIRouter, Response

from expert_pipeline.core.progress_public import STAGE_LABELS, STATUS_LABELS, STATUSES_OVER_STAGE
from status_api.schemas import LabelsResponse

LABELS_PATH = "/api/meta/labels"

router = APIRouter(tags=["meta"])


@router.get(LABELS_PATH, response_model=LabelsResponse)
def labels(response: Response) -> LabelsResponse:
    """The words shown for each stage and status: the dashboard, chat and the CLI all use these."""
    response.headers["Cache-Control"] = "public, max-age=300"  # fixed per release; spare the reload
    return LabelsResponse(
        stages=dict(STAGE_LABELS), statuses=dict(STATUS_LABELS), status_over_stage=list(STATUSES_OVER_STAGE)
    )
