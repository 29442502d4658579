"""The machine's embedding server: a real uvicorn process started as `make up` starts it,
reached through the OpenAI embedder exactly as runs and the API reach it."""

from __future__ import annotations

import base64
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from expert_pipeline.adapters import served_embedder
from expert_pipeline.adapters.embedder import LocalEmbedder
from expert_pipeline.adapters.served_embedder import (
    EmbeddingServerUnavailable,
    ServedEmbedder,
    served_local_embedder,
)
from expert_pipeline.cli.up import _listen
from expert_pipeline.embedding_server.batching import CoalescingEncoder
from tests.waiting import wait_for

TEXTS = [
    "Dagster partitions let each expert be ingested on its own.",
    "Die Katze sitzt auf der Matte, und der Hund schläft im Garten.",
    "Table 3: throughput in chunks per second, batch 32, bf16 on AVX-512.",
    "x",
    "A much longer passage. " * 80,  # over the model's 256 tokens: cut, as in process
]


@pytest.fixture(scope="module")
def server_url() -> Iterator[str]:
    listener = _listen(0)
    port = listener.getsockname()[1]
    uvicorn = Path(sys.executable).parent / "uvicorn"
    proc = subprocess.Popen(
        [
            str(uvicorn),
            "expert_pipeline.embedding_server.app:create_app",
            "--factory",
            "--fd",
            str(listener.fileno()),
        ],
        pass_fds=(listener.fileno(),),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    listener.close()  # the server holds its own copy
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def served(server_url: str) -> Iterator[ServedEmbedder]:
    embedder = served_local_embedder(server_url)
    embedder.warm_up()
    yield embedder
    embedder.close()


@pytest.fixture(scope="module")
def in_process() -> LocalEmbedder:
    return LocalEmbedder()


def _cosines(a: Sequence[Sequence[float]], b: Sequence[Sequence[float]]) -> np.ndarray:
    x, y = np.asarray(a), np.asarray(b)
    return np.sum(x * y, axis=1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1))


def test_served_vectors_and_token_counts_are_the_in_process_models(
    served: ServedEmbedder, in_process: LocalEmbedder
) -> None:
    assert served.model_name == in_process.model_name
    assert served.dimensions == in_process.dimensions == 384
    assert served.max_input_tokens == in_process.max_input_tokens
    assert [served.count_tokens(t) for t in TEXTS] == [in_process.count_tokens(t) for t in TEXTS]
    assert served.backend_in_use == f"served {in_process.backend_in_use}"
    assert _cosines(served.embed(TEXTS), in_process.embed(TEXTS)).min() >= 0.9999


def test_concurrent_callers_each_get_their_own_vectors(
    served: ServedEmbedder, in_process: LocalEmbedder
) -> None:
    batches = [[f"{text} (caller {k})" for text in TEXTS[:4]] for k in range(8)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(served.embed, batches))
    for batch, vectors in zip(batches, answers, strict=True):
        assert _cosines(vectors, in_process.embed(batch)).min() >= 0.9999


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"model": "text-embedding-3-small", "input": "a"}, 404, "model"),
        ({"model": "all-MiniLM-L6-v2", "input": []}, 400, "input"),
        ({"model": "all-MiniLM-L6-v2", "input": ["a", ""]}, 400, "input"),
        ({"model": "all-MiniLM-L6-v2"}, 400, "input"),
        ({"model": "all-MiniLM-L6-v2", "input": "a", "dimensions": 128}, 400, "dimensions"),
        ({"model": "all-MiniLM-L6-v2", "input": [1, 2, 3]}, 400, None),
    ],
)
def test_bad_requests_get_openai_shaped_errors(
    server_url: str, body: dict[str, object], status: int, param: str | None
) -> None:
    answer = httpx.post(f"{server_url}/embeddings", json=body, timeout=30)
    assert answer.status_code == status
    error = answer.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
    if param is not None:
        assert error["param"] == param


def test_float_and_base64_answers_agree(server_url: str) -> None:
    answers = {
        fmt: httpx.post(
            f"{server_url}/embeddings",
            json={"model": "all-MiniLM-L6-v2", "input": TEXTS[:2], "encoding_format": fmt},
            timeout=30,
        ).json()
        for fmt in ("float", "base64")
    }
    floats = np.asarray([row["embedding"] for row in answers["float"]["data"]], dtype=np.float32)
    decoded = np.stack(
        [np.frombuffer(base64.b64decode(row["embedding"]), "<f4") for row in answers["base64"]["data"]]
    )
    assert np.array_equal(floats, decoded)
    assert answers["float"]["usage"]["prompt_tokens"] > 0


def test_an_absent_server_is_a_clear_unavailable_error(monkeypatch: pytest.MonkeyPatch) -> None:
    listener = _listen(0)  # a port nobody serves once closed
    port = listener.getsockname()[1]
    listener.close()
    monkeypatch.setattr(served_embedder, "READY_WAIT_SECONDS", 0.5)
    with pytest.raises(EmbeddingServerUnavailable, match=f"127.0.0.1:{port}.*did not answer"):
        served_local_embedder(f"http://127.0.0.1:{port}/v1").warm_up()


def test_waiting_requests_share_one_forward_pass() -> None:
    release = threading.Event()
    passes: list[list[str]] = []

    def encode(texts: Sequence[str]) -> np.ndarray:
        passes.append(list(texts))
        release.wait(10)
        return np.asarray([[float(len(t))] for t in texts], dtype=np.float32)

    encoder = CoalescingEncoder(encode)
    try:
        first = encoder.submit(["a"])
        wait_for("the first pass to start (and be held)", lambda: bool(passes), timeout=10)
        later = [encoder.submit(["bb", "ccc"]), encoder.submit(["dddd"])]
        release.set()
        assert first.result(10).tolist() == [[1.0]]
        assert [f.result(10).tolist() for f in later] == [[[2.0], [3.0]], [[4.0]]]
        assert passes == [["a"], ["bb", "ccc", "dddd"]]
    finally:
        encoder.close()


def test_a_failed_pass_fails_every_request_in_it() -> None:
    def encode(texts: Sequence[str]) -> np.ndarray:
        raise RuntimeError("model crashed")

    encoder = CoalescingEncoder(encode)
    try:
        with pytest.raises(RuntimeError, match="model crashed"):
            encoder.submit(["a"]).result(10)
    finally:
        encoder.close()
