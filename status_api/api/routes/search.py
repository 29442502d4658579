"""Searching an expert's passages ("test retrieval"): what the chat would read for a question.

`POST /api/experts/{expert_id}/search` with `{"query": "...", "top_k": 5}` answers the ranked
passages (file, page, text, score) of the same hybrid retrieval the chat uses, so a person can
see why an answer cites what it cites. Owner-scoped and refused until ready, like the chat.
A plain `def`: the database, the model and the store are called in the thread pool.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from expert_pipeline.chat.extractive import source_of
from status_api.api.deps import CurrentPrincipal, ExpertId, ProgressServiceDep, SessionDep, get_principal
from status_api.api.routes.chat import RETRIEVAL_REFUSALS, find_passages, require_ready
from status_api.schemas import ErrorResponse, SearchRequest, SearchResponse, SearchResult

router = APIRouter(prefix="/api/experts", tags=["chat"], dependencies=[Depends(get_principal)])


@router.post(
    "/{expert_id}/search",
    response_model=SearchResponse,
    responses={
        **RETRIEVAL_REFUSALS,
        422: {"model": ErrorResponse, "description": "Empty or too long query, or top_k outside 1..50"},
    },
)
def search(
    expert_id: ExpertId,
    body: SearchRequest,
    request: Request,
    db: SessionDep,
    service: ProgressServiceDep,
    principal: CurrentPrincipal,
) -> SearchResponse:
    """The expert's passages that best match the query, best first, as the chat retrieves them."""
    require_ready(db, service, expert_id, principal)
    passages = find_passages(request, expert_id, body.query, body.top_k)
    return SearchResponse(results=[SearchResult(**source_of(p).as_dict()) for p in passages])
