"""One router for the whole API, as in the FastAPI full-stack template's `api/main.py`:
`status_api.main` mounts it once.

The answers the ASGI layers give before any route runs are documented here, once, for every
operation they guard: the auth gate's 401 (no valid token), 403 (local mode: a caller that is
not this machine, by peer, Host or Origin) and 503 (database down while authenticating) on
the gated `/api/*` routes. (The size limit's 413 is declared by the operations that take a
body: the uploads and chat.)
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from status_api.api.answers import json_error
from status_api.api.routes import chat, experts, health, meta, progress, search, stream, stream_tickets

GATE_ANSWERS: dict[int | str, dict[str, Any]] = {
    401: json_error("No valid API token (once tokens exist)"),
    403: json_error("Local mode (no API tokens): the caller is not this machine (peer, Host or Origin)"),
    503: json_error("The progress database is unavailable"),
}

api_router = APIRouter()
api_router.include_router(health.router)  # public, like /api/meta/labels: not behind the gate
for module in (progress, experts, stream, stream_tickets, chat, search):
    api_router.include_router(module.router, responses=GATE_ANSWERS)
api_router.include_router(meta.router)
