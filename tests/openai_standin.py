"""A small OpenAI-compatible server for tests: real HTTP on 127.0.0.1, the real response shapes.

`POST /v1/embeddings` answers like the OpenAI API: one deterministic unit vector per input, derived
from a hash of the text (`standin_vector`), shortened to `dimensions` the way text-embedding-3
models shorten (truncate, then renormalise), as float lists or, when asked (the openai SDK asks by
default), as base64 of little-endian float32. `POST /v1/chat/completions` returns a canned answer
quoting the last user message.

It records every request (`.requests`), checks the bearer token, can hold each embeddings request
for `delay` seconds (to make concurrency observable; `.max_in_flight`), and can be told to answer
with an error status, optionally with a `Retry-After` header: the next N requests (`fail_next`),
the first attempt of each of the next N calls, whose SDK retry then succeeds
(`fail_first_attempts`), or every request once N embeddings requests have been answered
(`outage_after`), until `recover()`.

Fixtures: `openai_standin` (a running server) and `openai_embedder` (an OpenAIEmbedder pointed at
it, api_key "test-key", few retries, short timeout).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from expert_pipeline.adapters.openai.embedder import OpenAIEmbedder
from tests.threaded_server import ThreadedServer

API_KEY = "test-key"
NATIVE_DIMENSIONS = {
    "text-embedding-3-small": 1536,
    "text-embedding-3-large": 3072,
    "text-embedding-ada-002": 1536,
}
MAX_INPUTS = 2048


def standin_vector(
    text: str, dimensions: int | None = None, model: str = "text-embedding-3-small"
) -> np.ndarray:
    """The unit float32 vector the stand-in returns for `text` (and `dimensions`, if asked)."""
    native = NATIVE_DIMENSIONS.get(model, 1536)
    seed = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little")
    vector = np.random.default_rng(seed).standard_normal(native)
    if dimensions is not None:
        vector = vector[:dimensions]
    return (vector / np.linalg.norm(vector)).astype(np.float32)


@dataclass
class RecordedRequest:
    path: str
    body: dict[str, Any]
    headers: dict[str, str]
    status: int = 0  # filled in when answered

    @property
    def inputs(self) -> list[Any]:
        value = self.body.get("input", [])
        return [value] if isinstance(value, str) else list(value)

    @property
    def retry_count(self) -> int:
        """The SDK's own count of retries so far for this call (its x-stainless-retry-count)."""
        return int(self.headers.get("x-stainless-retry-count", "0"))


def _error(status: int, message: str, kind: str, headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": kind, "param": None, "code": None}}
    return JSONResponse(body, status_code=status, headers=headers)


@dataclass
class OpenAIStandin:
    api_key: str = API_KEY
    delay: float = 0.0  # seconds each embeddings request is held before it is answered
    requests: list[RecordedRequest] = field(default_factory=list)
    max_in_flight: int = 0
    _in_flight: int = 0
    _failures: deque[tuple[int, float | None]] = field(default_factory=deque)
    _first_attempt_failures: deque[tuple[int, float | None]] = field(default_factory=deque)
    _outage: tuple[int, int, float | None] | None = None  # (after N answered, status, retry_after)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _http: ThreadedServer | None = None
    port: int = 0

    # ---- control -----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The base URL clients use, like https://api.openai.com/v1."""
        return f"http://127.0.0.1:{self.port}/v1"

    def fail_next(self, n: int, status: int, retry_after: float | None = None) -> None:
        """Answer the next `n` requests (any endpoint) with `status`, with Retry-After if given."""
        with self._lock:
            self._failures.extend([(status, retry_after)] * n)

    def fail_first_attempts(self, n: int, status: int, retry_after: float | None = None) -> None:
        """Answer the first attempt (x-stainless-retry-count 0) of each of the next `n` calls with
        `status`: trouble that recurs call after call, each time ridden out by one retry."""
        with self._lock:
            self._first_attempt_failures.extend([(status, retry_after)] * n)

    def outage_after(self, answered: int, status: int, retry_after: float | None = None) -> None:
        """Once `answered` embeddings requests have had vectors, answer every request with `status`."""
        with self._lock:
            self._outage = (answered, status, retry_after)

    def recover(self) -> None:
        """Forget the failures still queued and end any outage: the provider is healthy again."""
        with self._lock:
            self._failures.clear()
            self._first_attempt_failures.clear()
            self._outage = None

    @property
    def embedding_requests(self) -> list[RecordedRequest]:
        """The embeddings requests that were answered with vectors."""
        with self._lock:
            return [r for r in self.requests if r.path == "/v1/embeddings" and r.status == 200]

    # ---- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> OpenAIStandin:
        self._http = ThreadedServer(self._app(), name="the OpenAI stand-in", lifespan="off").__enter__()
        self.port = self._http.port
        return self

    def __exit__(self, *_: object) -> None:
        assert self._http is not None
        self._http.__exit__()

    # ---- the HTTP side -----------------------------------------------------------------------

    def _begin(self, request: Request, body: dict[str, Any]) -> tuple[RecordedRequest, JSONResponse | None]:
        record = RecordedRequest(request.url.path, body, {k.lower(): v for k, v in request.headers.items()})
        with self._lock:
            self.requests.append(record)
            failure = self._failure_for(record)
        if failure is not None:
            status, retry_after = failure
            headers = {"retry-after": f"{retry_after:g}"} if retry_after is not None else None
            kind = "rate_limit_exceeded" if status == 429 else "server_error"
            return record, _error(status, f"stand-in failure ({status})", kind, headers)
        if record.headers.get("authorization") != f"Bearer {self.api_key}":
            return record, _error(401, "Incorrect API key provided.", "invalid_request_error")
        return record, None

    def _failure_for(self, record: RecordedRequest) -> tuple[int, float | None] | None:
        """The failure to answer `record` with, if any (called holding the lock)."""
        if self._outage is not None:
            answered, status, retry_after = self._outage
            done = sum(1 for r in self.requests if r.path == "/v1/embeddings" and r.status == 200)
            if done >= answered:
                return status, retry_after
        if self._failures:
            return self._failures.popleft()
        if self._first_attempt_failures and record.retry_count == 0:
            return self._first_attempt_failures.popleft()
        return None

    def _app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/v1/embeddings")
        async def embeddings(request: Request) -> JSONResponse:
            body = await request.json()
            record, refusal = self._begin(request, body)
            with self._lock:
                self._in_flight += 1
                self.max_in_flight = max(self.max_in_flight, self._in_flight)
            try:
                if self.delay:
                    await asyncio.sleep(self.delay)
                response = refusal or self._embeddings(body)
            finally:
                with self._lock:
                    self._in_flight -= 1
            record.status = response.status_code
            return response

        @app.post("/v1/chat/completions")
        async def chat(request: Request) -> JSONResponse:
            body = await request.json()
            record, refusal = self._begin(request, body)
            response = refusal or self._chat(body)
            record.status = response.status_code
            return response

        return app

    def _embeddings(self, body: dict[str, Any]) -> JSONResponse:
        model = body.get("model")
        raw = body.get("input")
        inputs = [raw] if isinstance(raw, str) else raw
        if not isinstance(model, str) or not isinstance(inputs, list) or not inputs:
            return _error(400, "'model' and a non-empty 'input' are required", "invalid_request_error")
        if len(inputs) > MAX_INPUTS:
            message = f"'input' has {len(inputs)} items; at most {MAX_INPUTS}"
            return _error(400, message, "invalid_request_error")
        if any(item == "" for item in inputs):
            return _error(400, "'input' cannot contain an empty string", "invalid_request_error")
        dimensions = body.get("dimensions")
        native = NATIVE_DIMENSIONS.get(model, 1536)
        if dimensions is not None and not (isinstance(dimensions, int) and 1 <= dimensions <= native):
            return _error(400, f"'dimensions' must be between 1 and {native}", "invalid_request_error")
        encoding_format = body.get("encoding_format", "float")
        if encoding_format not in ("float", "base64"):
            return _error(400, "'encoding_format' must be 'float' or 'base64'", "invalid_request_error")

        data = []
        for index, item in enumerate(inputs):
            # Token-array inputs are hashed by their printed form; strings by their text.
            vector = standin_vector(item if isinstance(item, str) else repr(item), dimensions, model)
            embedding: Any = (
                base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
                if encoding_format == "base64"
                else vector.tolist()
            )
            data.append({"object": "embedding", "index": index, "embedding": embedding})
        tokens = sum(_rough_tokens(item) for item in inputs)
        return JSONResponse(
            {
                "object": "list",
                "data": data,
                "model": model,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            },
            headers={"x-request-id": f"req_{uuid.uuid4().hex}"},
        )

    def _chat(self, body: dict[str, Any]) -> JSONResponse:
        question = ""
        for message in body.get("messages", []):
            if message.get("role") == "user":
                content = message.get("content", "")
                if isinstance(content, list):  # content parts
                    content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
                question = str(content)
        answer = f'Stand-in answer to: "{question}"'
        prompt_tokens = sum(_rough_tokens(str(m.get("content", ""))) for m in body.get("messages", []))
        completion_tokens = _rough_tokens(answer)
        return JSONResponse(
            {
                "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model", "gpt-4o-mini"),
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": answer, "refusal": None},
                        "logprobs": None,
                        "finish_reason": "stop",
                    }
                ],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
            }
        )


def _rough_tokens(item: Any) -> int:
    """Usage numbers for the response only (nothing checks them): ~4 characters a token."""
    if isinstance(item, list):
        return len(item)
    return max(1, len(str(item)) // 4)


@pytest.fixture
def openai_standin() -> Iterator[OpenAIStandin]:
    with OpenAIStandin() as server:
        yield server


@pytest.fixture
def openai_embedder(openai_standin: OpenAIStandin) -> OpenAIEmbedder:
    return OpenAIEmbedder(api_key=API_KEY, base_url=openai_standin.url, max_retries=2, timeout_seconds=10)
