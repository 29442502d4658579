"""The bundled sentence model (a BERT encoder with mean pooling) run with plain torch.

Why not sentence-transformers at run time: importing it, and transformers with it, takes about
7 s here, and every Dagster run is a new process that pays it before its first chunk; torch,
tokenizers and safetensors import in about 2 s. For a one-page upload that is the difference
between a ready expert in about 8 s and in about 13 s. The forward pass below is the textbook
BERT encoder (post-norm layers, exact GELU, absolute positions), followed by the model's own
pooling (mean over real tokens) and normalisation; tests check its vectors against
sentence-transformers on the same model. Anything that is not exactly that shape (another
architecture, another pooling) is left to sentence-transformers (`supports` says which).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from tokenizers import Tokenizer

from expert_pipeline.adapters.local_model_files import SpecialTokensCounter, model_files, read_json

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


class BertSentenceEncoder:
    """The encoder in torch. `bf16=True` runs the matrix products under CPU bf16 autocast
    (layer norms, softmax and pooling stay fp32); the weights stay fp32 either way."""

    backend = "torch-fp32"
    counts_alongside_encoding = True  # counting has its own tokenizer and lock

    def __init__(self, model_dir: Path, device: str = "cpu", bf16: bool = False) -> None:
        self.model_dir = model_dir
        self.bf16 = bf16
        if bf16:
            self.backend = "torch-bf16"
        config = read_json(model_dir / "config.json")
        # Vector size and token limit read as a process without torch reads them (the served embedder).
        facts = model_files(model_dir)
        self.hidden = facts.dimensions
        self.heads = int(config["num_attention_heads"])
        self.layers = int(config["num_hidden_layers"])
        self.eps = float(config["layer_norm_eps"])
        self.max_seq_length = facts.max_seq_length
        self.device = torch.device(device)
        self.weights = load_file(str(model_dir / "model.safetensors"), device=str(self.device))
        # Two tokenizers, because truncation is a setting of the tokenizer: counting must see
        # past the limit (the same counter the served embedder uses), encoding must cut at it
        # (keeping [SEP] at the end, as BERT expects).
        self._counting = SpecialTokensCounter(facts.tokenizer_file)
        self._encoding = Tokenizer.from_file(str(facts.tokenizer_file))
        self._encoding.enable_truncation(max_length=self.max_seq_length)
        self._encoding.no_padding()

    @property
    def dimensions(self) -> int:
        return self.hidden

    def count_tokens(self, text: str) -> int:
        """Tokens including [CLS] and [SEP], as the model would see them before truncation."""
        return len(self._counting.encode_ordinary(text))

    def batches(
        self, texts: Sequence[str], batch_size: int
    ) -> Iterator[tuple[list[int], np.ndarray, np.ndarray]]:
        """(positions in `texts`, token ids, attention mask) per batch, longest texts first, so
        each batch pads to lengths close to its own. Shared by every backend."""
        encodings = self._encoding.encode_batch(list(texts), add_special_tokens=True)
        order = sorted(range(len(encodings)), key=lambda i: -len(encodings[i].ids))
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            width = len(encodings[batch[0]].ids)
            ids = np.zeros((len(batch), width), dtype=np.int64)
            mask = np.zeros((len(batch), width), dtype=np.bool_)
            for row, index in enumerate(batch):
                tokens = encodings[index].ids
                ids[row, : len(tokens)] = tokens
                mask[row, : len(tokens)] = True
            yield batch, ids, mask

    def encode(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        out = np.empty((len(texts), self.hidden), dtype=np.float32)
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            for batch, ids, mask in self.batches(texts, batch_size):
                vectors = self._forward(
                    torch.from_numpy(ids).to(self.device), torch.from_numpy(mask).to(self.device)
                )
                out[batch] = vectors.float().cpu().numpy()
        return out

    def as_module(self) -> torch.nn.Module:
        """The forward pass (token ids, mask -> unit vectors) as a module, for conversion."""
        encoder = self

        class _Forward(torch.nn.Module):
            def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
                return encoder._forward(ids, mask)

        return _Forward()

    def _linear(self, x: torch.Tensor, name: str) -> torch.Tensor:
        return F.linear(x, self.weights[f"{name}.weight"], self.weights[f"{name}.bias"])

    def _norm(self, x: torch.Tensor, name: str) -> torch.Tensor:
        return F.layer_norm(
            x, (self.hidden,), self.weights[f"{name}.weight"], self.weights[f"{name}.bias"], self.eps
        )

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        w = self.weights
        batch, width = ids.shape
        head_size = self.hidden // self.heads
        x = (
            w["embeddings.word_embeddings.weight"][ids]
            + w["embeddings.position_embeddings.weight"][:width]
            + w["embeddings.token_type_embeddings.weight"][0]
        )
        x = self._norm(x, "embeddings.LayerNorm")
        # Padding keys take no part in attention; every row has at least [CLS] to attend to.
        attend = mask[:, None, None, :]

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, width, self.heads, head_size).transpose(1, 2)

        for layer in range(self.layers):
            p = f"encoder.layer.{layer}"
            q, k, v = (split(self._linear(x, f"{p}.attention.self.{n}")) for n in ("query", "key", "value"))
            context = F.scaled_dot_product_attention(q, k, v, attn_mask=attend)
            context = context.transpose(1, 2).reshape(batch, width, self.hidden)
            x = self._norm(
                self._linear(context, f"{p}.attention.output.dense") + x, f"{p}.attention.output.LayerNorm"
            )
            hidden = F.gelu(self._linear(x, f"{p}.intermediate.dense"))
            x = self._norm(self._linear(hidden, f"{p}.output.dense") + x, f"{p}.output.LayerNorm")
        weights = mask.unsqueeze(-1).to(x.dtype)
        pooled = (x * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
        return F.normalize(pooled, p=2, dim=1)
