"""The local model as served by the embedding server (`expert_pipeline/embedding_server/`):
the OpenAI embedder pointed at it, counting tokens with the model's own tokenizer file, so a
process that embeds this way never imports torch or holds the model."""

from __future__ import annotations

import time
from typing import Any

import httpx
from pydantic import PrivateAttr

from expert_pipeline.adapters.local_model_files import LOCAL_MODEL_NAME, model_files
from expert_pipeline.adapters.openai.embedder import OpenAIEmbedder
from expert_pipeline.adapters.service_trouble import NO_ANSWER, ServiceUnavailable

# The server loads the model before it answers (seconds; a first OpenVINO conversion ~30 s).
READY_WAIT_SECONDS = 120.0


class EmbeddingServerUnavailable(ServiceUnavailable):
    pass


class ServedEmbedder(OpenAIEmbedder):
    _health: dict[str, Any] | None = PrivateAttr(default=None)

    @property
    def health_url(self) -> str:
        return (self.base_url or "").rstrip("/").removesuffix("/v1") + "/health"

    def warm_up(self) -> float:
        """Wait until the server has its model loaded; the seconds waited."""
        started = time.monotonic()
        self._server_health(READY_WAIT_SECONDS)
        return time.monotonic() - started

    @property
    def backend_in_use(self) -> str:
        return f"served {self._server_health(READY_WAIT_SECONDS).get('backend', 'unknown')}"

    @property
    def backend_fallback_reason(self) -> str | None:
        reason = self._server_health(READY_WAIT_SECONDS).get("fallback_reason")
        return str(reason) if reason else None

    def _server_health(self, wait: float) -> dict[str, Any]:
        if self._health is not None:
            return self._health
        deadline = time.monotonic() + wait
        while True:
            try:
                answer = httpx.get(self.health_url, timeout=5.0)
                answer.raise_for_status()
                self._health = dict(answer.json())
                return self._health
            except (httpx.HTTPError, ValueError) as exc:
                if time.monotonic() >= deadline:
                    raise EmbeddingServerUnavailable(
                        f"the embedding server at {self.base_url} did not answer within {wait:g} s "
                        f"({type(exc).__name__}); it runs with `make up` (EMBEDDING_SERVER_URL)",
                        service="embedding server",
                        status=NO_ANSWER,
                        attempts=1,
                    ) from exc
                time.sleep(0.2)


def served_local_embedder(base_url: str) -> ServedEmbedder:
    facts = model_files()
    return ServedEmbedder(
        api_key="local",  # the SDK needs one; the server is on this machine and takes any
        base_url=base_url,
        model=LOCAL_MODEL_NAME,
        embedding_dimensions=facts.dimensions,
        tokenizer_file=str(facts.tokenizer_file),
        input_token_limit=facts.max_seq_length,
    )
