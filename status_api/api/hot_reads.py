"""The polled GETs answered from memory, before FastAPI routes anything.

`GET /api/experts/{id}/progress` and `GET /api/experts/progress/active` are what dashboards ask
again and again. Behind the auth gate (which has put the caller in `scope["state"]`), this
pure ASGI layer answers them with the bytes the broadcaster's tick keeps
(`status_api.live.snapshot`): the same body, status and headers as the FastAPI route for the
same state, owner-checked the same way (someone else's expert is the same 404 as a missing one),
from a read at most two ticks old and made after this process's last progress write. Anything
else, and any miss (memory not fresh, an expert not held yet: it is read from the next tick
on), goes on to FastAPI and the database as before; the routes stay declared there, so the
OpenAPI document does not change.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from starlette.types import ASGIApp, Receive, Scope, Send

from expert_pipeline.core.auth import Principal
from status_api.api.deps import EXPERT_ID_PATTERN, PRINCIPAL_STATE_KEY
from status_api.api.errors import error_response
from status_api.live.broadcaster import ProgressBroadcaster

ACTIVE_PATH = "/api/experts/progress/active"
_ONE_PATH = re.compile(r"^/api/experts/(" + EXPERT_ID_PATTERN.strip("^$") + r")/progress$")
_JSON = b"application/json"


@dataclass
class HotReadStats:
    """Counters for tests and benchmarks."""

    hits: int = 0
    not_found: int = 0
    misses: int = 0


def _has_body(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"transfer-encoding" or (name == b"content-length" and value.strip() not in (b"", b"0")):
            return True
    return False


class HotReads:
    def __init__(self, app: ASGIApp, broadcaster: ProgressBroadcaster) -> None:
        self.app = app
        self.broadcaster = broadcaster
        self.stats = HotReadStats()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "GET":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if path == ACTIVE_PATH:
            expert_id = None
        else:
            match = _ONE_PATH.match(path) if path.endswith("/progress") else None
            if match is None:
                await self.app(scope, receive, send)
                return
            expert_id = match.group(1)
        principal = scope.get("state", {}).get(PRINCIPAL_STATE_KEY)
        if not isinstance(principal, Principal) or _has_body(scope) or scope.get("root_path"):
            await self.app(scope, receive, send)
            return
        broadcaster = self.broadcaster
        broadcaster.hold()
        answers = broadcaster.answers
        if not answers.usable():
            broadcaster.wake()
            self.stats.misses += 1
            await self.app(scope, receive, send)
            return
        if expert_id is None:
            body = answers.active_body(principal)
        else:
            entry = answers.entry(expert_id)
            if entry is None:
                answers.want(expert_id)
                self.stats.misses += 1
                await self.app(scope, receive, send)
                return
            if entry.record is None or not principal.sees(entry.owner):
                self.stats.not_found += 1
                # The route's own 404 (HTTPException -> error handler), word for word.
                message = f"No progress record for expert '{expert_id}'"
                await error_response(404, message)(scope, receive, send)
                return
            body = entry.body
        self.stats.hits += 1
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-length", b"%d" % len(body)), (b"content-type", _JSON)],
            }
        )
        await send({"type": "http.response.body", "body": body})
