"""The baselines for bench/api_load.py, answering every request with the bytes the real progress
endpoint returned (same size, same content type), no database: a bare ASGI callable (no
framework), and a FastAPI app whose one route (the progress path) returns those bytes. Served
by the same uvicorn with exactly the same options as the status API, factory included:

    uvicorn bench.bare_asgi:create_app --factory ...
    uvicorn bench.bare_asgi:create_fastapi_app --factory ...

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


def create_fastapi_app() -> ASGIApp:
    """FastAPI's floor for this answer: routing, path parameter validation, a Response of bytes."""
    from fastapi import FastAPI, Response

    body = Path(os.environ["BARE_BODY_FILE"]).read_bytes()
    app = FastAPI()

    @app.get("/api/experts/{expert_id}/progress")
    async def progress(expert_id: str) -> Response:
        return Response(body, media_type="application/json")

    return app


def create_status_app() -> ASGIApp:
    """`status_api.main:create_app` as it is, with its INFO lines on stderr (plain uvicorn shows
    only its own), so the benchmark can read how the polled GETs were answered at shutdown."""
    import logging

    from status_api.main import create_app

    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("status_api")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    return create_app()
