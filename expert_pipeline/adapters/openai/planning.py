"""Packing inputs into few large embedding requests, within the OpenAI API's limits.

Requests are sized by the API's real limits rather than a fixed small batch: at most 2,048 inputs
and 300,000 tokens summed over one request, and 8,192 tokens for any single input (as documented
for `client.embeddings.create`). A large embedding is spread over up to `parallel` requests in
flight at once, but never split into requests below about 100,000 tokens just to run them in
parallel, so 1,000 chunks of ~256 tokens cost at most 4 requests.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Sequence

__all__ = [
    "ESTIMATE_SAFETY_FACTOR",
    "MAX_INPUTS_PER_REQUEST",
    "MAX_INPUT_TOKENS",
    "MAX_TOKENS_PER_REQUEST",
    "MIN_TOKENS_PER_PARALLEL_REQUEST",
    "plan_requests",
    "request_token_limit",
]

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


def request_token_limit(exact_counts: bool) -> int:
    """The tokens one request may carry as counted: the API's limit, or a safe share of it for estimates."""
    if exact_counts:
        return MAX_TOKENS_PER_REQUEST
    return int(MAX_TOKENS_PER_REQUEST * ESTIMATE_SAFETY_FACTOR)


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
