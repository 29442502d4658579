"""The baseline for bench/api_load.py: a bare ASGI callable, no framework and no database, that
answers every request with the bytes the real progress endpoint returned (same size, same
content type). Served by the same uvicorn with exactly the same options as the status API,
factory included:

    uvicorn bench.bare_asgi:create_app --factory ...

The body comes from the file named by BARE_BODY_FILE."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def create_app() -> ASGIApp:
    body = Path(os.environ["BARE_BODY_FILE"]).read_bytes()
    start = {
        "type": "http.response.start",
        "status": 200,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
    }
    response = {"type": "http.response.body", "body": body}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        await send(start)
        await send(response)

    return app
