"""Single-use tickets for opening a live stream.

`POST /api/stream-tickets` (authenticated like every /api/* request, by the Authorization
header) answers `{"ticket": "st_...", "expires_in": 60}`. The ticket opens one stream, as the
caller, within that time: `GET /api/experts/progress/stream?ticket=...` (or one expert's
stream). EventSource cannot send headers, and a token in a URL ends up in access logs and
browser history; a ticket there is worthless once used or a minute old. Tickets are stored
hashed in the database, so any API worker process can redeem one.
"""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from expert_pipeline.core import auth
from status_api.api.deps import CurrentPrincipal, SessionDep
from status_api.schemas import ErrorResponse

router = APIRouter(prefix="/api", tags=["progress stream"])


class StreamTicketResponse(BaseModel):
    ticket: str = Field(description="Opens one stream: pass it as `?ticket=`; single use")
    expires_in: int = Field(
        description="Seconds the ticket stays valid", examples=[auth.STREAM_TICKET_SECONDS]
    )


@router.post(
    "/stream-tickets",
    response_model=StreamTicketResponse,
    responses={401: {"model": ErrorResponse, "description": "No valid API token"}},
    summary="A single-use ticket for opening a live progress stream",
)
def create_stream_ticket(principal: CurrentPrincipal, db: SessionDep) -> StreamTicketResponse:
    """A ticket for `?ticket=` on the two stream routes, valid for one stream within
    `expires_in` seconds; the stream shows what the caller's token may see."""
    return StreamTicketResponse(
        ticket=auth.issue_stream_ticket(db, principal), expires_in=auth.STREAM_TICKET_SECONDS
    )
