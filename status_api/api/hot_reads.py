"""The polled GETs answered from memory, in front of FastAPI.

`GET /api/experts/{id}/progress` and `GET /api/experts/progress/active` are what dashboards ask
again and again. This pure ASGI layer sits in front of the whole application (FastAPI's own
layers included: `status_api.main.StatusAPI`), and answers them when it can do so from memory
alone: the caller's token is known and accepted (`token_cache`, checked first, before anything
else is looked at), and the broadcaster's tick holds the answer (`status_api.live.snapshot`):
the bytes the FastAPI route would send for the same state, status and headers included (the
security headers too), owner-checked the same way (someone else's expert is the same 404 as a
missing one), from the latest read: made after this process's last progress write, and
started at most `fresh_seconds` (two ticks, 0.3 s) ago, or it waits for the next read. Anything else (no token or local mode, an unknown or refused token, a request with a
body, a miss: an expert not held yet, which is then read from the next tick on, or memory
not fresh after waiting for the reads under way) goes through the application as before: the gate, FastAPI, the database. The routes
stay declared in FastAPI, so the OpenAPI document does not change.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from starlette.types import ASGIApp, Receive, Scope, Send

from status_api.api.deps import EXPERT_ID_PATTERN, bearer_token
from status_api.api.errors import error_response
from status_api.api.security_headers import SECURITY_HEADERS
from status_api.api.token_cache import TokenCache
from status_api.live.broadcaster import ProgressBroadcaster
from status_api.live.snapshot import ProgressSnapshot

ACTIVE_PATH = "/api/experts/progress/active"
_ONE_PATH = re.compile(r"^/api/experts/(" + EXPERT_ID_PATTERN.strip("^$") + r")/progress$")
# After the response's own headers, as `SecurityHeaders` appends them to the route's answer.
_SECURITY = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in SECURITY_HEADERS]
_JSON = [(b"content-type", b"application/json"), *_SECURITY]


@dataclass
class HotReadStats:
    """Counters for tests and benchmarks."""

    hits: int = 0
    not_found: int = 0
    misses: int = 0
    waits: int = 0  # memory was behind: waited for the next read


def _credentials(scope: Scope) -> str | None:
    """The bearer token, or None when the request has none or has a body (never answered here)."""
    token = None
    for name, value in scope["headers"]:
        if name == b"authorization":
            token = bearer_token(value.decode("latin-1"))
        elif name == b"transfer-encoding" or (name == b"content-length" and value.strip() not in (b"", b"0")):
            return None
    return token or None


class HotReads:
    def __init__(self, app: ASGIApp, broadcaster: ProgressBroadcaster, tokens: TokenCache) -> None:
        self.app = app
        self.broadcaster = broadcaster
        self.tokens = tokens
        self.stats = HotReadStats()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "GET" or scope.get("root_path"):
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
        token = _credentials(scope)
        principal = self.tokens.principal(token) if token is not None else None
        if principal is None:
            await self.app(scope, receive, send)
            return
        broadcaster = self.broadcaster
        broadcaster.hold()
        answers = broadcaster.answers
        if not answers.usable() and not await self._fresh(answers):
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
                # The route's own 404 (HTTPException -> the error handler), word for word.
                refusal = error_response(404, f"No progress record for expert '{expert_id}'")
                await send(
                    {
                        "type": "http.response.start",
                        "status": 404,
                        "headers": [*refusal.raw_headers, *_SECURITY],
                    }
                )
                await send({"type": "http.response.body", "body": refusal.body})
                return
            body = entry.body
        self.stats.hits += 1
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-length", b"%d" % len(body)), *_JSON],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def _fresh(self, answers: ProgressSnapshot) -> bool:
        """Memory is behind (a write of ours since the last read, or the read is late): wait for
        the reads under way rather than burden the database, up to `fresh_seconds`."""
        self.stats.waits += 1
        deadline = time.monotonic() + answers.fresh_seconds
        while not answers.usable():
            left = deadline - time.monotonic()
            if left <= 0 or not await self.broadcaster.next_read(left):
                return False
        return True
