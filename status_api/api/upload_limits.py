"""Refusing oversized request bodies before they are read.

The multipart parser spools every uploaded file to disk before a route runs, so the per-file
and total limits checked while storing files come too late for a 50 GB request: the disk
would fill first. And any other route (chat, cancel, ...) would read a body of any size into
memory before validating it. This ASGI middleware answers 413 at once when `Content-Length` is
over the limit, and, for a body sent without a length (chunked), as soon as the bytes received
pass it; the application then sees a disconnected client and stops reading.

Only the two upload routes (POST /api/experts and POST /api/experts/{id}/files) get the upload
limit; every other request body is capped at `max_body_bytes` (64 KB: a chat message is at
most 2,000 characters).
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[MutableMapping[str, Any], Receive, Send], Awaitable[None]]

# Multipart framing (boundaries, part headers) on top of the files' own bytes.
FRAMING_ALLOWANCE_BYTES = 1024 * 1024
DEFAULT_MAX_BODY_BYTES = 64 * 1024
UPLOAD_PATH = re.compile(r"^/api/experts(?:/[^/]+/files)?/?$")


def is_upload(scope: MutableMapping[str, Any]) -> bool:
    return scope["method"] == "POST" and UPLOAD_PATH.match(scope["path"]) is not None


class RequestSizeLimit:
    """413 for a body over its route's limit. Uploads: `max_upload_bytes` plus the framing
    allowance, and the message names the upload limit the user knows (MAX_UPLOAD_TOTAL_BYTES),
    not the allowance added to it. Anything else: `max_body_bytes`."""

    def __init__(
        self, app: ASGIApp, max_upload_bytes: int, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    ) -> None:
        self.app = app
        self.max_upload_bytes = max_upload_bytes
        self.max_upload_body_bytes = max_upload_bytes + FRAMING_ALLOWANCE_BYTES
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        upload = is_upload(scope)
        limit = self.max_upload_body_bytes if upload else self.max_body_bytes
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await self._reject(send, upload)
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
                if received > limit:
                    rejected = True
                    if not started:
                        await self._reject(send, upload)
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

    def _message(self, upload: bool) -> str:
        if upload:
            megabytes = self.max_upload_bytes / (1024 * 1024)
            return f"request too large: uploads are limited to {megabytes:.4g} MB in all"
        kilobytes = self.max_body_bytes / 1024
        return (
            f"request too large: this request's body is limited to {kilobytes:.4g} KB "
            "(only uploads, POST /api/experts and POST /api/experts/{id}/files, may be larger)"
        )

    async def _reject(self, send: Send, upload: bool) -> None:
        body = json.dumps({"success": False, "error": self._message(upload)}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _content_length(scope: MutableMapping[str, Any]) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
