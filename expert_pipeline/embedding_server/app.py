"""The embedding server: the local model behind an OpenAI-compatible API.

`POST /v1/embeddings` answers as OpenAI's does (float or base64 vectors, OpenAI-shaped errors),
so the OpenAI embedder is the one client for both the hosted and the local model. `make up`
starts it once per machine (see `expert_pipeline/cli/up.py`) and hands its URL to every run.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from expert_pipeline.adapters.embedder import LocalEmbedder
from expert_pipeline.adapters.local_model_files import LOCAL_MODEL_NAME, counter_for, model_files
from expert_pipeline.core.settings import get_settings
from expert_pipeline.embedding_server.batching import CoalescingEncoder

MAX_INPUTS = 2048  # as OpenAI's embeddings endpoint


class EmbeddingsRequest(BaseModel):
    model: str
    input: str | list[str]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = None


class ServerHealth(BaseModel):
    status: Literal["ok"] = "ok"
    model: str
    dimensions: int
    max_input_tokens: int
    backend: str
    fallback_reason: str | None


def _error(status: int, message: str, param: str | None = None, code: str | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}}
    return JSONResponse(body, status_code=status)


def create_app(embedder: LocalEmbedder | None = None) -> FastAPI:
    local = embedder or LocalEmbedder(backend=get_settings().embedding_backend)
    facts = model_files()
    counter = counter_for(facts.tokenizer_file)
    state: dict[str, CoalescingEncoder] = {}

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # Loaded before the first answer: requests wait in the socket's backlog meanwhile.
        await asyncio.to_thread(local.warm_up)
        state["encoder"] = CoalescingEncoder(local.embed_array)
        yield
        state.pop("encoder").close()

    app = FastAPI(title="Expert Pipeline embedding server", lifespan=lifespan, docs_url=None, redoc_url=None)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
        return _error(400, f"{where or 'body'}: {first.get('msg', 'invalid request')}", where or None)

    @app.get("/health", response_model=ServerHealth)
    def health() -> ServerHealth:
        return ServerHealth(
            model=LOCAL_MODEL_NAME,
            dimensions=facts.dimensions,
            max_input_tokens=facts.max_seq_length,
            backend=local.backend_in_use,
            fallback_reason=local.backend_fallback_reason,
        )

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": LOCAL_MODEL_NAME, "object": "model", "owned_by": "local"}]}

    @app.post("/v1/embeddings", response_model=None)
    async def embeddings(request: EmbeddingsRequest) -> Response:
        if request.model != LOCAL_MODEL_NAME:
            return _error(
                404,
                f"The model '{request.model}' is not served here (only {LOCAL_MODEL_NAME})",
                "model",
                "model_not_found",
            )
        if request.dimensions is not None and request.dimensions != facts.dimensions:
            return _error(400, f"{LOCAL_MODEL_NAME} has {facts.dimensions} dimensions only", "dimensions")
        texts = [request.input] if isinstance(request.input, str) else request.input
        if not texts or len(texts) > MAX_INPUTS:
            return _error(400, f"input must hold 1 to {MAX_INPUTS} texts", "input")
        if any(not text for text in texts):
            return _error(400, "input must not contain empty strings", "input")
        vectors = await asyncio.wrap_future(state["encoder"].submit(texts))
        # Counting up to 2,048 texts takes tens of ms: off the event loop, as the encoding is.
        tokens = await asyncio.to_thread(lambda: sum(len(counter.encode_ordinary(text)) for text in texts))
        data = [
            {
                "object": "embedding",
                "index": i,
                "embedding": base64.b64encode(row.astype("<f4").tobytes()).decode("ascii")
                if request.encoding_format == "base64"
                else row.tolist(),
            }
            for i, row in enumerate(vectors)
        ]
        body = {
            "object": "list",
            "data": data,
            "model": LOCAL_MODEL_NAME,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        return Response(json.dumps(body, separators=(",", ":")), media_type="application/json")

    return app
