"""The local model's encoder backends (EMBEDDING_BACKEND): every one available here gives vectors
within cosine 0.99 of the fp32 torch reference on real text, and an unavailable or failing one
ends on fp32 with the reason logged, never a crash. No speed is asserted (bench/encoder_backends.py
measures it)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from expert_pipeline.adapters import embedder as embedder_module
from expert_pipeline.adapters import encoder_choice
from expert_pipeline.adapters.embedder import LocalEmbedder, clear_model_cache
from expert_pipeline.adapters.encoder_choice import cpu_has_bf16, openvino_installed
from expert_pipeline.core.settings import Settings
from expert_pipeline.text.chunking import chunk_pages
from expert_pipeline.text.pages import PageText
from tests.conftest import SHARED_DIR

MIN_COSINE = 0.99


def real_chunks(count_tokens, limit: int = 120) -> list[str]:  # type: ignore[no-untyped-def]
    """Up to `limit` chunks of real prose, cut as ingestion cuts them (256 tokens): the shared
    sample PDFs when they are there, then Python's own reference documentation."""
    import pydoc_data.topics

    pages: list[PageText] = []
    corpus = SHARED_DIR / "corpus"
    for pdf in sorted(corpus.glob("*.pdf")) if corpus.is_dir() else []:
        try:
            from pypdf import PdfReader

            reader = PdfReader(str(pdf))
            pages += [PageText(i + 1, page.extract_text() or "") for i, page in enumerate(reader.pages)]
        except Exception:  # noqa: BLE001, S112 - the password-protected sample, for one
            continue
    topics = pydoc_data.topics.topics
    pages += [PageText(len(pages) + i + 1, topics[name]) for i, name in enumerate(sorted(topics))]
    chunks = [c.text for c in chunk_pages(pages, "real.txt", count_tokens=count_tokens)]
    return [c for c in chunks if c.strip()][:limit]


@pytest.fixture(scope="module")
def reference() -> LocalEmbedder:
    return LocalEmbedder(backend="torch-fp32")


@pytest.fixture(scope="module")
def texts(reference: LocalEmbedder) -> list[str]:
    chunks = real_chunks(reference.count_tokens)
    short = ["x", "", "The cat sat on the mat.", "Ünïcödé — ok? 12345"]
    return short + chunks


def _min_cosine(a: list[list[float]], b: list[list[float]]) -> float:
    x, y = np.asarray(a), np.asarray(b)
    return float(np.min(np.sum(x * y, axis=1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1))))


AVAILABLE = ["torch-fp32"]
if cpu_has_bf16():
    AVAILABLE.append("torch-bf16")
if openvino_installed():
    AVAILABLE.append("openvino")


def test_the_texts_are_real_and_long(texts: list[str], reference: LocalEmbedder) -> None:
    assert len(texts) >= 100
    assert max(reference.count_tokens(t) for t in texts) >= 200


@pytest.mark.parametrize("backend", [*AVAILABLE, "auto"])
def test_every_available_backend_stays_within_cosine_of_fp32(
    backend: str, reference: LocalEmbedder, texts: list[str]
) -> None:
    expected = reference.embed(texts)
    embedder = LocalEmbedder(backend=backend)  # type: ignore[arg-type]
    got = embedder.embed(texts)
    assert embedder.dimensions == 384 and embedder.max_input_tokens == 256
    assert np.asarray(got).shape == (len(texts), 384)
    assert np.allclose(np.linalg.norm(np.asarray(got), axis=1), 1.0, atol=1e-3)
    assert _min_cosine(got, expected) >= MIN_COSINE
    # What runs is what the capabilities say: no silent fallback where the backend is available.
    assert embedder.backend_fallback_reason is None
    if backend == "openvino" or (backend == "auto" and openvino_installed()):
        assert embedder.backend_in_use.startswith("openvino-")
        assert embedder.backend_in_use.endswith("bf16" if cpu_has_bf16() else "fp32")
    elif backend == "auto":
        assert embedder.backend_in_use == ("torch-bf16" if cpu_has_bf16() else "torch-fp32")
    else:
        assert embedder.backend_in_use == backend
    # Same text alone or in a batch: the same vector, up to the backend's precision.
    (alone,) = embedder.embed([texts[10]])
    assert _min_cosine([alone], [got[10]]) >= 0.999


def test_token_counting_is_the_same_for_every_backend(reference: LocalEmbedder, texts: list[str]) -> None:
    counts = [reference.count_tokens(t) for t in texts[:20]]
    for backend in AVAILABLE:
        embedder = LocalEmbedder(backend=backend)  # type: ignore[arg-type]
        assert [embedder.count_tokens(t) for t in texts[:20]] == counts


class _RecordingLog:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def info(self, message: str) -> None:
        self.lines.append(("info", message))

    def warning(self, message: str) -> None:
        self.lines.append(("warning", message))


def test_a_failing_openvino_conversion_ends_on_fp32_with_the_reason(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture, texts: list[str]
) -> None:
    pytest.importorskip("openvino")
    from expert_pipeline.adapters import openvino_encoder

    def broken(*args: object, **kwargs: object) -> Path:
        raise RuntimeError("conversion exploded")

    monkeypatch.setattr(openvino_encoder, "converted_model", broken)
    # Without bf16, auto has nothing between OpenVINO and fp32.
    monkeypatch.setattr(encoder_choice, "cpu_has_bf16", lambda: False)
    clear_model_cache()
    try:
        for backend in ("openvino", "auto"):
            embedder = LocalEmbedder(backend=backend, model_cache_dir=str(tmp_path))  # type: ignore[arg-type]
            run_log = _RecordingLog()
            embedder.log_to(run_log)
            with caplog.at_level(logging.INFO, logger="expert_pipeline.adapters.embedder"):
                embedder.warm_up()
            assert embedder.backend_in_use == "torch-fp32"
            reason = embedder.backend_fallback_reason or ""
            assert "openvino" in reason and "conversion exploded" in reason
            assert "conversion exploded" in caplog.text
            assert run_log.lines and run_log.lines[0][0] == "warning"
            assert "torch-fp32" in run_log.lines[0][1] and "conversion exploded" in run_log.lines[0][1]
            vectors = embedder.embed(texts[:8])
            assert _min_cosine(vectors, LocalEmbedder(backend="torch-fp32").embed(texts[:8])) > 0.99999
    finally:
        clear_model_cache()


def test_a_backend_the_machine_lacks_ends_on_fp32(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(encoder_choice, "cpu_has_bf16", lambda: False)
    monkeypatch.setattr(encoder_choice, "openvino_installed", lambda: False)
    clear_model_cache()
    try:
        for backend, words in (("torch-bf16", "no bf16"), ("openvino", "not installed")):
            embedder = LocalEmbedder(backend=backend, model_cache_dir=str(tmp_path))  # type: ignore[arg-type]
            assert embedder.backend_in_use == "torch-fp32"
            assert words in (embedder.backend_fallback_reason or "")
            assert len(embedder.embed(["still works"])[0]) == 384
        auto = LocalEmbedder(backend="auto", model_cache_dir=str(tmp_path))
        assert auto.backend_in_use == "torch-fp32"
        assert encoder_choice.planned_backend("auto") == "torch-fp32"
    finally:
        clear_model_cache()


def test_a_drifting_backend_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # A backend whose vectors are wrong (here: bf16 forced to return noise) fails the load-time
    # check against fp32 and is not used.
    from expert_pipeline.adapters import bert_encoder

    original = bert_encoder.BertSentenceEncoder.encode

    def noisy(self: bert_encoder.BertSentenceEncoder, texts: list[str], batch_size: int = 32) -> np.ndarray:
        vectors = original(self, texts, batch_size)
        if self.bf16:
            vectors = np.roll(vectors, 1, axis=1)
        return vectors

    monkeypatch.setattr(bert_encoder.BertSentenceEncoder, "encode", noisy)
    monkeypatch.setattr(encoder_choice, "cpu_has_bf16", lambda: True)
    clear_model_cache()
    try:
        embedder = LocalEmbedder(backend="torch-bf16", model_cache_dir=str(tmp_path))
        assert embedder.backend_in_use == "torch-fp32"
        assert "drift" in (embedder.backend_fallback_reason or "")
    finally:
        clear_model_cache()


def test_the_setting_reaches_the_embedder_and_the_parts_description(monkeypatch: pytest.MonkeyPatch) -> None:
    from expert_pipeline.adapters.factory import build_embedder
    from expert_pipeline.adapters.parts_description import describe_parts
    from expert_pipeline.resources.parts import LocalEmbedderResource

    monkeypatch.setenv("EMBEDDING_BACKEND", "torch-fp32")
    settings = Settings()
    assert settings.embedding_backend == "torch-fp32"
    built = build_embedder(settings)
    assert isinstance(built, LocalEmbedder) and built.backend == "torch-fp32"
    assert "encoder torch-fp32" in describe_parts(settings)["embeddings"]
    assert Settings(embedding_backend="auto").embedding_backend == "auto"
    assert "encoder " in describe_parts(Settings(embedding_backend="auto"))["embeddings"]
    with pytest.raises(ValueError):
        Settings(embedding_backend="cuda-int4")  # type: ignore[arg-type]
    assert LocalEmbedderResource(backend="torch-fp32").backend == "torch-fp32"


def test_openvino_serves_without_torch_in_the_process(tmp_path: Path) -> None:
    # The conversion (the one step that needs torch) runs in a child, and later loads check the
    # IR against the fp32 vectors kept beside it: torch never enters the serving process.
    pytest.importorskip("openvino")
    import subprocess
    import sys

    script = (
        "import sys\n"
        "from expert_pipeline.adapters.embedder import LocalEmbedder\n"
        f"e = LocalEmbedder(backend='openvino', model_cache_dir={str(tmp_path)!r})\n"
        "v = e.embed(['torch stays out'])\n"
        "print(e.backend_in_use, e.backend_fallback_reason, len(v[0]), 'torch' in sys.modules)\n"
    )
    for _first_then_cached in range(2):
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        backend, reason, size, torch_loaded = done.stdout.split()
        assert backend.startswith("openvino-") and reason == "None" and size == "384"
        assert torch_loaded == "False"
    assert len(list(tmp_path.glob("*/probe-fp32.npy"))) == 1
