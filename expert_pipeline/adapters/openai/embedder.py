"""The OpenAI embedder: the pipeline's `Embedder` over the official `openai` SDK.

Inputs are counted (`tokens`), packed into few large requests sent in parallel (`planning`),
and the vectors checked and normalised. Every answer, including the ones the SDK retries, is
counted per status through an httpx hook (`take_trouble`).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, PrivateAttr

from expert_pipeline.adapters.openai.planning import MAX_INPUT_TOKENS, plan_requests, request_token_limit
from expert_pipeline.adapters.openai.tokens import TokenCounter, token_counter_for
from expert_pipeline.adapters.service_trouble import NO_ANSWER, ServiceUnavailable, TroubleLog

if TYPE_CHECKING:
    # Importing openai takes ~0.4 s; keep it off the import path of the Dagster code location.
    import openai
    from expert_pipeline.adapters.embedder import Embedder

__all__ = [
    "DEFAULT_DIMENSIONS",
    "MODELS_WITH_DIMENSIONS_PARAMETER",
    "OpenAIEmbedder",
    "OpenAIEmbeddingError",
    "OpenAIProviderUnavailable",
]

DEFAULT_DIMENSIONS = {
    "text-embedding-3-small": 1536,
    "text-embedding-3-large": 3072,
    "text-embedding-ada-002": 1536,
}
# Models that accept the `dimensions` request parameter (shortened embeddings).
MODELS_WITH_DIMENSIONS_PARAMETER = frozenset({"text-embedding-3-small", "text-embedding-3-large"})


class OpenAIEmbeddingError(RuntimeError):
    """An embeddings request failed for good (after the SDK's retries, where it retries)."""


class OpenAIProviderUnavailable(ServiceUnavailable, OpenAIEmbeddingError):
    """The provider still answered 429/5xx (or nothing) when the SDK stopped retrying: worth
    retrying later, unlike a refused key or a bad request."""


class OpenAIEmbedder(BaseModel):
    """Embeddings from OpenAI's API or any OpenAI-compatible server (`base_url`).

    Implements the pipeline's `Embedder` interface. The SDK client is created on first use.
    Retries are the SDK's own (429, 408, 409, 5xx, timeouts, connection errors; exponential
    backoff, honouring the server's Retry-After), so that the server's wait is obeyed in one place;
    whatever they give up on is raised as `OpenAIProviderUnavailable`, for a later retry.
    """

    api_key: str
    base_url: str | None = None
    model: str = "text-embedding-3-small"
    embedding_dimensions: int | None = None
    max_concurrent_requests: int = 4
    max_retries: int = 6
    timeout_seconds: float = 60
    # An OpenAI-compatible server running another model (the local embedding server): its
    # Hugging Face tokenizer file counts tokens exactly, and its input limit replaces OpenAI's.
    tokenizer_file: str | None = None
    input_token_limit: int | None = None

    _client: Any = PrivateAttr(default=None)
    _client_lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)
    _trouble: TroubleLog = PrivateAttr(default_factory=TroubleLog)

    # ---- the Embedder interface ------------------------------------------------------------

    @property
    def model_name(self) -> str:
        return self.model

    @property
    def dimensions(self) -> int:
        if self.embedding_dimensions is not None:
            return self.embedding_dimensions
        try:
            return DEFAULT_DIMENSIONS[self.model]
        except KeyError:
            raise ValueError(
                f"OpenAIEmbedder: the dimensions of model {self.model!r} are not known; "
                "set embedding_dimensions"
            ) from None

    @property
    def max_input_tokens(self) -> int:
        return self.input_token_limit or MAX_INPUT_TOKENS

    def count_tokens(self, text: str) -> int:
        return self._counter().count(text)

    @property
    def exact_token_counts(self) -> bool:
        """Whether `count_tokens` uses the model's real tokenizer (False: a cautious estimate)."""
        return self._counter().exact

    @property
    def token_counting(self) -> str:
        """How tokens are counted, for logs and run metadata."""
        return self._counter().description

    def warm_up(self) -> float:
        """Nothing to load: the API holds the model (the client is created on first request)."""
        return 0.0

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        return self.embed_batches(texts)

    def take_trouble(self) -> dict[int, int]:
        """Retried answers (HTTP status -> count) since the last call."""
        return self._trouble.take()

    # ---- the work ----------------------------------------------------------------------------

    def embed_batches(
        self, texts: Sequence[str], on_progress: Callable[[int], None] | None = None
    ) -> list[list[float]]:
        """Like `embed`; `on_progress(n)` is called with the number of texts each request just
        embedded, on the calling thread, as each request completes (in completion order)."""
        if isinstance(texts, str):
            raise TypeError("embed takes a sequence of texts, not one string")
        texts = list(texts)
        if not texts:
            return []
        counter = self._counter()
        counts = [self._checked_count(i, text, counter) for i, text in enumerate(texts)]
        plan = plan_requests(
            counts, parallel=self.max_concurrent_requests, max_tokens=request_token_limit(counter.exact)
        )
        client = self._get_client()

        results: list[list[list[float]] | None] = [None] * len(plan)
        if len(plan) == 1:
            results[0] = self._request(client, texts, 0, 1)
            if on_progress is not None:
                on_progress(len(texts))
        else:
            pool = ThreadPoolExecutor(
                max_workers=min(self.max_concurrent_requests, len(plan)), thread_name_prefix="openai-embed"
            )
            try:
                futures: dict[Future[list[list[float]]], int] = {
                    pool.submit(self._request, client, [texts[i] for i in span], k, len(plan)): k
                    for k, span in enumerate(plan)
                }
                for future in as_completed(futures):
                    k = futures[future]
                    results[k] = future.result()  # raises the first failure; `finally` drops the rest
                    if on_progress is not None:
                        on_progress(len(plan[k]))
            finally:
                # On failure, requests not yet started are dropped; those in flight finish unseen.
                pool.shutdown(wait=False, cancel_futures=True)

        vectors = [vector for batch in results if batch is not None for vector in batch]
        return self._normalised(vectors)

    def check_configuration(self) -> None:
        """Raise ValueError naming what is wrong with the settings (no request is made)."""
        if not self.api_key or not self.api_key.strip():
            raise ValueError(
                "OpenAIEmbedder.api_key is empty: set it, e.g. api_key=dg.EnvVar('OPENAI_API_KEY')"
            )
        if self.max_concurrent_requests < 1:
            raise ValueError("OpenAIEmbedder.max_concurrent_requests must be at least 1")
        if self.max_retries < 0:
            raise ValueError("OpenAIEmbedder.max_retries must be 0 or more")
        if not self.timeout_seconds > 0:
            raise ValueError("OpenAIEmbedder.timeout_seconds must be above 0")
        if self.embedding_dimensions is not None:
            if self.embedding_dimensions < 1:
                raise ValueError("OpenAIEmbedder.embedding_dimensions must be at least 1")
            native = DEFAULT_DIMENSIONS.get(self.model)
            if native is not None and self.model not in MODELS_WITH_DIMENSIONS_PARAMETER:
                raise ValueError(
                    f"OpenAIEmbedder: model {self.model!r} does not accept "
                    "embedding_dimensions (only text-embedding-3 models do)"
                )
            if native is not None and self.embedding_dimensions > native:
                raise ValueError(
                    f"OpenAIEmbedder.embedding_dimensions={self.embedding_dimensions} is "
                    f"more than {self.model!r} has ({native})"
                )
        self.dimensions  # noqa: B018 - raises for a model whose dimensions are unknown

    def close(self) -> None:
        """Close the HTTP client (the Dagster resource does after each run)."""
        with self._client_lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    # ---- helpers -----------------------------------------------------------------------------

    def _counter(self) -> TokenCounter:
        if self.tokenizer_file is not None:
            return tokenizer_file_counter(self.tokenizer_file)
        return token_counter_for(self.model)

    def _checked_count(self, index: int, text: str, counter: TokenCounter) -> int:
        if not isinstance(text, str):
            raise TypeError(f"text {index} is a {type(text).__name__}, not a str")
        if not text:
            raise ValueError(f"text {index} is empty; the embeddings API rejects empty inputs")
        n = counter.count(text)
        # A served local model cuts a long input at its limit itself, as it does in process.
        if n > self.max_input_tokens and self.tokenizer_file is None:
            how = "" if counter.exact else " (estimated: the exact tokenizer is not available)"
            raise ValueError(
                f"text {index} is {n} tokens{how}, over the {self.max_input_tokens}-token limit of "
                f"{self.model} for one input; split it into smaller chunks"
            )
        return n

    def _get_client(self) -> openai.OpenAI:
        with self._client_lock:
            if self._client is None:
                self.check_configuration()
                import openai

                self._client = openai.OpenAI(
                    api_key=self.api_key,
                    base_url=self.base_url,  # None: OPENAI_BASE_URL, else api.openai.com/v1
                    max_retries=self.max_retries,
                    timeout=self.timeout_seconds,
                    # The SDK's own client settings, plus a hook that sees every answer,
                    # including the ones the SDK then retries.
                    http_client=openai.DefaultHttpxClient(
                        event_hooks={
                            "response": [lambda response: self._trouble.record(response.status_code)]
                        }
                    ),
                )
            return self._client

    def _request(self, client: openai.OpenAI, texts: list[str], k: int, n: int) -> list[list[float]]:
        import openai

        extra: dict[str, Any] = {}
        if self.embedding_dimensions is not None:
            extra["dimensions"] = self.embedding_dimensions
        # encoding_format is left out on purpose: the SDK then asks for base64 (a quarter of the
        # JSON size) and decodes it itself; passing it would hand back undecoded strings.
        try:
            response = client.embeddings.create(model=self.model, input=texts, **extra)
        except openai.APIError as exc:
            where = self.base_url or "the OpenAI API"
            transient = isinstance(exc, openai.APIConnectionError) or (
                isinstance(exc, openai.APIStatusError)
                and (exc.status_code in (408, 409, 429) or exc.status_code >= 500)
            )
            status = (
                f"HTTP {exc.status_code}" if isinstance(exc, openai.APIStatusError) else type(exc).__name__
            )
            retries = _retries_taken(exc)
            attempts = f"after {retries} retries" if retries else "(not retried)"
            detail = (
                f"embedding request {k + 1} of {n} ({len(texts)} texts, model {self.model}) to "
                f"{where} failed {attempts}: {status}: {exc}"
            )
            if transient:
                code = exc.status_code if isinstance(exc, openai.APIStatusError) else NO_ANSWER
                raise OpenAIProviderUnavailable(
                    detail, service="embedding provider", status=code, attempts=retries + 1
                ) from exc
            raise OpenAIEmbeddingError(detail) from exc

        vectors: list[Any] = [None] * len(texts)
        for item in response.data:
            if not 0 <= item.index < len(texts) or vectors[item.index] is not None:
                raise OpenAIEmbeddingError(f"embedding response {k + 1} of {n} has a bad index {item.index}")
            vectors[item.index] = item.embedding
        if any(v is None for v in vectors):
            raise OpenAIEmbeddingError(
                f"embedding response {k + 1} of {n} has {len(response.data)} vectors for {len(texts)} texts"
            )
        return vectors

    def _normalised(self, vectors: list[list[float]]) -> list[list[float]]:
        matrix = np.asarray(vectors, dtype=np.float64)
        expected = self.dimensions
        if matrix.ndim != 2 or matrix.shape[1] != expected:
            got = matrix.shape[1] if matrix.ndim == 2 else "ragged"
            raise OpenAIEmbeddingError(
                f"{self.model} returned {got}-dimensional vectors, expected {expected} "
                "(set embedding_dimensions to match the model)"
            )
        norms = np.linalg.norm(matrix, axis=1, keepdims=True)
        if not np.all(np.isfinite(norms)) or np.any(norms == 0):
            raise OpenAIEmbeddingError(f"{self.model} returned a zero or non-finite vector")
        # The API already returns unit vectors; dividing again is cheap and makes it a promise.
        return (matrix / norms).tolist()


@functools.lru_cache(maxsize=4)
def tokenizer_file_counter(path: str) -> TokenCounter:
    """The counter for a model's tokenizer file, one per process (built ahead by the run
    forkserver, so forked runs share it)."""
    from expert_pipeline.adapters.local_model_files import counter_for

    return TokenCounter(True, f"exact ({Path(path).name} of the served model)", counter_for(Path(path)))


def _retries_taken(exc: Exception) -> int:
    """How many times the SDK retried before giving up: the x-stainless-retry-count it put on
    the last attempt (a long Retry-After, for one, makes it give up without retrying)."""
    request = getattr(exc, "request", None)
    try:
        return int(request.headers.get("x-stainless-retry-count", "0")) if request is not None else 0
    except (TypeError, ValueError):
        return 0


if TYPE_CHECKING:

    def _satisfies_the_interface(embedder: OpenAIEmbedder) -> Embedder:
        return embedder
