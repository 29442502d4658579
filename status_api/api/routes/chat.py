"""Chatting with an expert once its documents are ingested.

`POST /api/experts/{expert_id}/chat` with `{"message": "..."}`: the expert's passages are found
by the shared hybrid retrieval (`expert_pipeline.retrieval.search`: vectors from the model the
pipeline used plus keywords, fused by rank; top 4 passages, the same search the search API
answers with), and the app's chat provider builds the answer with `[n]` citations into `sources`. The embedded provider
is extractive (`expert_pipeline.chat.extractive`); set `app.state.chat_provider` to another
callable with the same signature to use a language model instead.

The route is a plain `def`, so FastAPI runs it in the thread pool: the database, the embedding
model and the vector store are never called on the event loop.
"""

from __future__ import annotations

import math
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request
from sqlalchemy.orm import Session

from expert_pipeline import retrieval
from expert_pipeline.chat import extractive
from expert_pipeline.core import experts_service
from expert_pipeline.core.auth import Principal
from expert_pipeline.core.models import ExpertProcessingProgress, Status
from expert_pipeline.core.progress_public import progress_in_words
from expert_pipeline.core.progress_service import ExpertProcessingProgressService
from status_api.api.answers import EXPERT_NOT_FOUND, TOO_LARGE
from status_api.api.deps import (
    CurrentPrincipal,
    ExpertId,
    ProgressServiceDep,
    SessionDep,
    _part,
    get_principal,
    require_expert,
)
from status_api.schemas import ChatRequest, ChatResponse, ChatSource, ErrorResponse

router = APIRouter(prefix="/api/experts", tags=["chat"], dependencies=[Depends(get_principal)])

TOP_K = 4


def percent_done(value: float) -> str:
    # Rounded down: a run at 99.6 % is not "100 % done".
    return str(math.floor(value))


def not_ready_message(name: str, record: ExpertProcessingProgress | None) -> str:
    if record is None:
        return f"{name} is not ready yet: not queued for processing, 0% done"
    words = progress_in_words(record.status, record.stage)
    message = f"{name} is not ready yet: {words.lower()}, {percent_done(record.progress_percentage)}% done"
    if record.status in (Status.FAILED, Status.CANCELLED) and record.error_message:
        message += f" ({record.error_message})"
    return message


def require_ready(
    db: Session, service: ExpertProcessingProgressService, expert_id: str, principal: Principal
) -> None:
    """404 for an expert the caller may not see, 409 until it is ready to chat; then the
    session's connection is given back before the slower retrieval work."""
    expert = require_expert(db, expert_id, principal)
    record = service.get_progress(expert_id)
    if not experts_service.ready_to_chat(record, experts_service.files_of(db, [expert_id])[expert_id]):
        raise HTTPException(status_code=409, detail=not_ready_message(expert.name, record))
    db.close()


def find_passages(request: Request, expert_id: str, query: str, top_k: int) -> list[retrieval.Passage]:
    """The app's retrieval over the expert's namespace (built once per app from settings)."""
    embedder = _part(request, "embedder")
    store = _part(request, "vector_store")
    return retrieval.search(embedder, store, expert_id, query, top_k=top_k)  # type: ignore[arg-type]


# What both retrieval routes (chat and search) may refuse with; each adds its own 422.
RETRIEVAL_REFUSALS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "The body is not readable JSON"},
    **EXPERT_NOT_FOUND,
    **TOO_LARGE,
    409: {"model": ErrorResponse, "description": "Being processed, or no document indexed yet"},
}


@router.post(
    "/{expert_id}/chat",
    response_model=ChatResponse,
    responses={
        **RETRIEVAL_REFUSALS,
        422: {"model": ErrorResponse, "description": "Empty or too long message"},
    },
)
def chat(
    expert_id: ExpertId,
    body: ChatRequest,
    request: Request,
    db: SessionDep,
    service: ProgressServiceDep,
    principal: CurrentPrincipal,
) -> ChatResponse:
    """Ask the expert a question; the answer quotes its documents with numbered sources."""
    require_ready(db, service, expert_id, principal)
    matches = find_passages(request, expert_id, body.message, TOP_K)
    provider = getattr(request.app.state, "chat_provider", None) or extractive.answer
    text, sources = provider(body.message, matches)
    return ChatResponse(answer=text, sources=[ChatSource(**s.as_dict()) for s in sources])
