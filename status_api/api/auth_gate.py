"""The gate in front of every `/api/*` request: who is asking, decided before any body is read.

Authentication used to be a FastAPI dependency, which runs after the request body has been
received and parsed: an unauthenticated 200 MB POST was read whole before its 401. This pure
ASGI middleware looks only at the request line and headers, resolves the caller (from the
tokens held in memory, `token_cache`, for a known accepted token; otherwise one database lookup
in a worker thread, the same rules as `deps.resolve_principal`), answers 401 without
touching the body, and otherwise leaves the principal in `scope["state"]` for the routes'
dependency. The live-stream routes also accept a single-use `?ticket=` (see `auth`), since
EventSource cannot send an Authorization header and a token in a URL ends up in logs.

Local mode (no token in the database: every caller is an operator) is only safe on this
machine, so the app enforces it whatever address it is bound to: loopback peers only, a Host
header of localhost / 127.0.0.1 / [::1] (any port; DNS rebinding), and no state-changing
request from a foreign `Origin`. The rest of the app (dashboard files, docs, /healthz, and
`/api/meta/labels`) is public in every mode and is not gated.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlsplit

import anyio.to_thread
from fastapi import HTTPException
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.orm import Session
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from expert_pipeline.core import auth
from expert_pipeline.core.auth import LOCAL_PRINCIPAL, Principal
from status_api.api.deps import PRINCIPAL_STATE_KEY, bearer_token, resolve_principal
from status_api.api.errors import error_response
from status_api.api.token_cache import TokenCache

log = logging.getLogger(__name__)

# Under /api but public in every mode: fixed words, fetched by the dashboard before sign-in.
PUBLIC_API_PATHS = frozenset({"/api/meta/labels"})
# The two live-stream routes, the only ones that take `?ticket=`.
STREAM_PATH = re.compile(r"^/api/experts/(?:[^/]+/)?progress/stream$")
LOOPBACK_HOST_NAMES = frozenset({"localhost", "127.0.0.1", "[::1]"})
LOOPBACK_ORIGIN_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})

CREATE_A_TOKEN = (
    "create an API token (`expert-pipeline tokens create --owner NAME`) and send it as "
    "'Authorization: Bearer <token>'"
)
NOT_LOOPBACK_PEER = (
    "This API has no API tokens yet (local mode) and serves only this machine. "
    f"To use it from another one, {CREATE_A_TOKEN}."
)
NOT_LOOPBACK_HOST = (
    "In local mode (no API tokens) this API answers only to the host names localhost, 127.0.0.1 "
    f"and [::1], not {{host!r}}. To serve other names, {CREATE_A_TOKEN}."
)
FOREIGN_ORIGIN = (
    "In local mode (no API tokens) this API refuses changes requested by pages from other origins "
    f"({{origin!r}}). Use the dashboard on this machine, or {CREATE_A_TOKEN}."
)
DATABASE_UNAVAILABLE = "The progress database is unavailable; try again shortly."


@dataclass(frozen=True, slots=True)
class _Refusal:
    message: str


def is_api_path(path: str) -> bool:
    return path == "/api" or path.startswith("/api/")


def _query_value(scope: Scope, name: str) -> str | None:
    for key, value in parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True):
        if key == name:
            return value
    return None


def is_loopback_peer(client: tuple[str, int] | None) -> bool:
    """Whether the peer is this machine. No address (a Unix socket) counts as this machine."""
    if client is None:
        return True
    try:
        address = ipaddress.ip_address(client[0])
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1 on a dual-stack socket
    return address.is_loopback or (mapped is not None and mapped.is_loopback)


def host_name(host: str) -> str:
    """The Host header without its port, lower-cased ("[::1]:8000" -> "[::1]")."""
    host = host.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        return host[: end + 1] if end != -1 else host
    name, _, _ = host.partition(":")
    return name


def is_loopback_origin(origin: str) -> bool:
    try:
        parts = urlsplit(origin.strip())
        return parts.scheme in ("http", "https") and parts.hostname in LOOPBACK_ORIGIN_HOSTS
    except ValueError:
        return False


def local_mode_refusal(scope: Scope, headers: Headers) -> str | None:
    """Why a local-mode request is refused (None: it comes from this machine, by its name)."""
    if not is_loopback_peer(scope.get("client")):
        return NOT_LOOPBACK_PEER
    host = headers.get("host")
    if host is not None and host_name(host) not in LOOPBACK_HOST_NAMES:
        return NOT_LOOPBACK_HOST.format(host=host[:200])
    origin = headers.get("origin")
    if origin is not None and scope["method"] in STATE_CHANGING and not is_loopback_origin(origin):
        return FOREIGN_ORIGIN.format(origin=origin[:200])
    return None


class AuthGate:
    """Resolves the caller of every `/api/*` request before the application (and its body
    parsing) runs; 401 / 403 / 503 answered here, never reading the body."""

    def __init__(self, app: ASGIApp, engine: Engine, tokens: TokenCache | None = None) -> None:
        self.app = app
        self.engine = engine
        self.tokens = tokens

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_api_path(scope["path"]) or scope["path"] in PUBLIC_API_PATHS:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        token = bearer_token(headers.get("authorization"))
        ticket = None
        if token is None and scope["method"] == "GET" and STREAM_PATH.match(scope["path"]):
            ticket = _query_value(scope, "ticket") or None
        if token and self.tokens is not None:
            # The common case from memory: a known, accepted token (no query).
            principal = self.tokens.principal(token)
            if principal is not None:
                scope.setdefault("state", {})[PRINCIPAL_STATE_KEY] = principal
                await self.app(scope, receive, send)
                return
        try:
            # Blocking database work: in a worker thread, never on the event loop.
            outcome = await anyio.to_thread.run_sync(self._resolve, token, ticket)
        except (OperationalError, PoolTimeoutError, DBAPIError) as exc:
            log.warning("database unavailable while authenticating: %s", exc.__class__.__name__, exc_info=exc)
            await self._refuse(scope, receive, send, headers, 503, DATABASE_UNAVAILABLE)
            return
        if isinstance(outcome, _Refusal):
            await self._refuse(
                scope, receive, send, headers, 401, outcome.message, {"WWW-Authenticate": "Bearer"}
            )
            return
        if outcome.token_id is None:  # local mode
            refusal = local_mode_refusal(scope, headers)
            if refusal is not None:
                await self._refuse(scope, receive, send, headers, 403, refusal)
                return
        scope.setdefault("state", {})[PRINCIPAL_STATE_KEY] = outcome
        await self.app(scope, receive, send)

    @staticmethod
    async def _refuse(
        scope: Scope,
        receive: Receive,
        send: Send,
        headers: Headers,
        status: int,
        message: str,
        extra: dict[str, str] | None = None,
    ) -> None:
        """Answer without reading the body; a request that has one is answered with
        `Connection: close`, so the server hangs up instead of draining the rest."""
        out = dict(extra or {})
        if "transfer-encoding" in headers or headers.get("content-length", "0") not in ("", "0"):
            out["Connection"] = "close"
        await error_response(status, message, headers=out)(scope, receive, send)

    def _resolve(self, token: str | None, ticket: str | None) -> Principal | _Refusal:
        """The caller, in one session (runs in a worker thread)."""
        with Session(self.engine, expire_on_commit=False) as session:
            if ticket is not None:
                try:
                    return auth.redeem_stream_ticket(session, ticket)
                except auth.Refused as refused:
                    # Local mode lets everyone in: a stale ticket is no reason to refuse.
                    return _Refusal(str(refused)) if auth.any_tokens(session) else LOCAL_PRINCIPAL
            try:
                return resolve_principal(session, token)
            except HTTPException as refused:
                return _Refusal(str(refused.detail))
