"""Admission control: at most N ordinary requests inside the application at once.

Routes are plain `def` functions that FastAPI runs in its thread pool, and a request makes
several hops there (dependencies, the route, response validation) while its session holds a
database connection. With more requests in flight than pool threads, requests holding
connections wait for threads while the threads wait for connections, and the API stalls until
the pool's timeout (seen at 200 concurrent clients). Letting at most N requests in, with N no
more than the threads and the connections, makes that impossible; the rest wait their turn on
the event loop, which costs nothing. Live streams are long-lived and hold no connection, so
they are not counted.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import anyio

Message = MutableMapping[str, Any]
ASGIApp = Callable[
    [MutableMapping[str, Any], Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]],
    Awaitable[None],
]

# Below anyio's default of 40 worker threads and the database pools (40 for SQLite, 30 for
# PostgreSQL), leaving room for the stream poller and the odd background read.
DEFAULT_MAX_IN_FLIGHT = 24


class AdmissionLimit:
    def __init__(self, app: ASGIApp, max_in_flight: int = DEFAULT_MAX_IN_FLIGHT) -> None:
        self.app = app
        self.limiter = anyio.CapacityLimiter(max_in_flight)

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"].endswith("/stream"):
            await self.app(scope, receive, send)
            return
        async with self.limiter:
            await self.app(scope, receive, send)
