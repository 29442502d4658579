"""Chatting with an expert once its documents are ingested.

`POST /api/experts/{expert_id}/chat` with `{"message": "..."}`: the question is embedded with
the same model the pipeline used, the expert's namespace is searched (top 4 passages), and the
app's chat provider builds the answer with `[n]` citations into `sources`. The embedded provider
is extractive (`expert_pipeline.chat.extractive`); set `app.state.chat_provider` to another
callable with the same signature to use a language model instead.

The route is a plain `def`, so FastAPI runs it in the thread pool: the database, the embedding
model and the vector store are never called on the event loop.
"""

from __future__ import annotations

import math

from fastapi import APIRouter, Depends, HTTPException, Request

from expert_pipeline.chat import extractive
from expert_pipeline.core import experts_service
from expert_pipeline.core.models import ExpertProcessingProgress, Status
from expert_pipeline.core.progress_public import progress_in_words
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


@router.post(
    "/{expert_id}/chat",
    response_model=ChatResponse,
    responses={
        400: {"model": ErrorResponse, "description": "The body is not readable JSON"},
        **EXPERT_NOT_FOUND,
        **TOO_LARGE,
        409: {"model": ErrorResponse, "description": "Being processed, or no document indexed yet"},
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
    expert = require_expert(db, expert_id, principal)
    record = service.get_progress(expert_id)
    if not experts_service.ready_to_chat(record, experts_service.files_of(db, [expert_id])[expert_id]):
        raise HTTPException(status_code=409, detail=not_ready_message(expert.name, record))
    db.close()  # give the connection back before the slower work below

    embedder = _part(request, "embedder")
    store = _part(request, "vector_store")
    vector = embedder.embed([body.message])[0]  # type: ignore[attr-defined]
    matches = store.query(namespace=expert_id, vector=vector, top_k=TOP_K)  # type: ignore[attr-defined]
    provider = getattr(request.app.state, "chat_provider", None) or extractive.answer
    text, sources = provider(body.message, matches)
    return ChatResponse(answer=text, sources=[ChatSource(**s.as_dict()) for s in sources])
