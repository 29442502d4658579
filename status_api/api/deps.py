"""Shared request dependencies: settings and a database session."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, HTTPException, Path, Request
from sqlalchemy import Engine
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from expert_pipeline.core import auth, experts_service
from expert_pipeline.core.auth import LOCAL_PRINCIPAL, Principal
from expert_pipeline.core.models import Expert
from expert_pipeline.core.ports import FileStorage, VectorStore
from expert_pipeline.core.progress_service import ExpertProcessingProgressService
from expert_pipeline.core.settings import Settings
from status_api.api.answers import expert_not_found, progress_not_found
from status_api.run_trigger import RunTrigger

# Ids are opaque but bounded: letters, digits and a few separators, as in the spec's examples
# ("expert-uuid", "expert-123"). Anything else is a client error, not a lookup.
EXPERT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"

ExpertId = Annotated[
    str,
    Path(pattern=EXPERT_ID_PATTERN, max_length=128, description="The expert's id", examples=["expert-123"]),
]


# Dependencies that do no I/O are `async def`: FastAPI runs a plain `def` dependency in its
# thread pool, and each such hop costs more than the work itself.
async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_engine(request: Request) -> Engine:
    return request.app.state.engine


async def _engine_dependency(request: Request) -> Engine:
    return request.app.state.engine


async def get_db(engine: Annotated[Engine, Depends(_engine_dependency)]) -> AsyncIterator[Session]:
    """A session for the request; the route uses it in a worker thread.

    Opened and closed on the event loop on purpose: a plain generator dependency is closed in a
    second thread-pool hop after the route, and under load (more requests in flight than pool
    threads) sessions waiting for that hop hold every connection while the threads that hold
    them wait for a connection: the API stalls for the pool timeout. Closing here returns the
    connection as soon as the route is done (closing is a rollback at most).
    """
    session = Session(engine, expire_on_commit=False)
    try:
        yield session
    finally:
        session.close()


SessionDep = Annotated[Session, Depends(get_db)]
SettingsDep = Annotated[Settings, Depends(get_settings)]


async def get_progress_service(db: SessionDep) -> ExpertProcessingProgressService:
    return ExpertProcessingProgressService(db)


ProgressServiceDep = Annotated[ExpertProcessingProgressService, Depends(get_progress_service)]


async def get_run_trigger(request: Request) -> RunTrigger | None:
    return getattr(request.app.state, "run_trigger", None)


RunTriggerDep = Annotated[RunTrigger | None, Depends(get_run_trigger)]


def _part(request: Request, role: str) -> object:
    """File storage and vector store are built once per app from settings (lazily, as they
    pull in the pipeline's libraries, which the progress endpoints do not need)."""
    parts = request.app.state.__dict__.setdefault("parts", {})
    if role not in parts:
        from expert_pipeline.adapters import factory as builders

        parts[role] = getattr(builders, f"build_{role}")(request.app.state.settings)
    return parts[role]


def get_file_storage(request: Request) -> FileStorage:
    return _part(request, "file_storage")  # type: ignore[return-value]


def get_vector_store(request: Request) -> VectorStore:
    return _part(request, "vector_store")  # type: ignore[return-value]


FileStorageDep = Annotated[FileStorage, Depends(get_file_storage)]
VectorStoreDep = Annotated[VectorStore, Depends(get_vector_store)]


# -- authentication ----------------------------------------------------------------------------
# Every /api/* request is authenticated by the ASGI gate (`status_api.api.auth_gate`) before
# any body is read; it leaves the principal in `scope["state"]`, where these dependencies find it.

PRINCIPAL_STATE_KEY = "principal"


def _unauthorized(message: str) -> HTTPException:
    return HTTPException(status_code=401, detail=message, headers={"WWW-Authenticate": "Bearer"})


MALFORMED = ""  # an Authorization header that is not "Bearer <token>"


class AuthenticatedToken(str):
    """What `_bearer` returns once the gate has authenticated the request: a route that calls
    `resolve_principal` in its own thread hop (the polled progress route) gets the gate's
    answer back without a second query."""

    principal: Principal


def bearer_token(header: str | None) -> str | None:
    """The token in an Authorization header value; None without one, MALFORMED when not Bearer."""
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return MALFORMED
    return token.strip()


def gate_principal(request: Request) -> Principal | None:
    """The principal the gate resolved for this request (None: the gate did not run)."""
    principal = request.scope.get("state", {}).get(PRINCIPAL_STATE_KEY)
    return principal if isinstance(principal, Principal) else None


def _bearer(request: Request) -> str | None:
    token = bearer_token(request.headers.get("authorization"))
    principal = gate_principal(request)
    if principal is None:
        return token
    resolved = AuthenticatedToken(token or "")
    resolved.principal = principal
    return resolved


def resolve_principal(session: Session, token: str | None) -> Principal:
    """The caller for `token` (from `_bearer`), or 401. Local mode (no token in the database)
    lets everyone in as an operator; otherwise the token must be known, unexpired and not
    revoked. Blocking: call it in a worker thread."""
    if isinstance(token, AuthenticatedToken):
        return token.principal
    if token is None:
        if not auth.any_tokens(session):
            return LOCAL_PRINCIPAL
        raise _unauthorized("Sign in: this API needs an API token (Authorization: Bearer <token>).")
    try:
        return auth.check_token(session, token)
    except auth.Refused as refused:
        if not auth.any_tokens(session):
            return LOCAL_PRINCIPAL  # local mode: a stale token in the browser is not an error
        if token == MALFORMED:
            raise _unauthorized("The Authorization header must be 'Bearer <token>'.") from None
        raise _unauthorized(str(refused)) from None


def _principal(request: Request, token: str | None) -> Principal:
    """`resolve_principal` in a session of its own, opened and closed here, so a long stream
    does not keep a connection checked out."""
    with Session(get_engine(request), expire_on_commit=False) as session:
        return resolve_principal(session, token)


async def get_principal(request: Request) -> Principal:
    """The caller: the gate's answer, or (an app built without the gate) the Bearer header's."""
    principal = gate_principal(request)
    if principal is not None:
        return principal
    return await run_in_threadpool(_principal, request, _bearer(request))


# The live streams authenticate like everything else; the gate also takes a stream ticket there.
get_stream_principal = get_principal

CurrentPrincipal = Annotated[Principal, Depends(get_principal)]
StreamPrincipal = Annotated[Principal, Depends(get_stream_principal)]


def require_visible(db: Session, principal: Principal, expert_id: str, not_found: str) -> None:
    """404 with the route's usual "not found" message when the caller may not see the expert:
    exactly what a missing expert answers, so nothing tells that it exists."""
    if not auth.can_see(db, principal, expert_id):
        raise HTTPException(status_code=404, detail=not_found)


def require_expert(db: Session, expert_id: str, principal: Principal) -> Expert:
    """The expert, or 404 when it is missing or not the caller's (the same answer)."""
    expert = experts_service.get_expert(db, expert_id)
    if expert is None or not principal.sees(expert.owner):
        raise expert_not_found(expert_id)
    return expert


def require_progress_visible(db: Session, principal: Principal, expert_id: str) -> None:
    """404 ("no progress record") when the caller may not see the expert's progress."""
    if not auth.can_see(db, principal, expert_id):
        raise progress_not_found(expert_id)
