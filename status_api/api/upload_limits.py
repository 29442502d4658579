"""Refusing oversized uploads before they are read.

The multipart parser spools every uploaded file to disk before a route runs, so the per-file
and total limits checked while storing files come too late for a 50 GB request: the disk
would fill first. This ASGI middleware answers 413 at once when `Content-Length` is over the
limit, and, for a body sent without a length (chunked), as soon as the bytes received pass it;
the application then sees a disconnected client and stops reading.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[MutableMapping[str, Any], Receive, Send], Awaitable[None]]

# Multipart framing (boundaries, part headers) on top of the files' own bytes.
FRAMING_ALLOWANCE_BYTES = 1024 * 1024


class RequestSizeLimit:
    """413 for a body over `max_upload_bytes` plus the framing allowance; the message names the
    upload limit the user knows (MAX_UPLOAD_TOTAL_BYTES), not the allowance added to it."""

    def __init__(self, app: ASGIApp, max_upload_bytes: int) -> None:
        self.app = app
        self.max_upload_bytes = max_upload_bytes
        self.max_body_bytes = max_upload_bytes + FRAMING_ALLOWANCE_BYTES

    async def __call__(self, scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_body_bytes:
            await self._reject(send)
            return

        received = 0
        rejected = False
        started = False

        async def limited_receive() -> Message:
            nonlocal received, rejected
            if rejected:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    rejected = True
                    if not started:
                        await self._reject(send)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if rejected:
                return  # the client already has its 413
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        await self.app(scope, limited_receive, guarded_send)

    async def _reject(self, send: Send) -> None:
        megabytes = self.max_upload_bytes / (1024 * 1024)
        message = f"request too large: uploads are limited to {megabytes:.4g} MB in all"
        body = json.dumps({"success": False, "error": message}).encode()
        await send({
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                        (b"connection", b"close")],
        })
        await send({"type": "http.response.body", "body": body})


def _content_length(scope: MutableMapping[str, Any]) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
