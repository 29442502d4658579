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

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from expert_pipeline.adapters.bert_tokens import BertTokens
from expert_pipeline.adapters.local_model_files import read_json, supports

__all__ = ["BertSentenceEncoder", "supports"]


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
        self.tokens = BertTokens(model_dir)
        self.hidden = self.tokens.dimensions
        self.heads = int(config["num_attention_heads"])
        self.layers = int(config["num_hidden_layers"])
        self.eps = float(config["layer_norm_eps"])
        self.max_seq_length = self.tokens.max_seq_length
        self.device = torch.device(device)
        self.weights = load_file(str(model_dir / "model.safetensors"), device=str(self.device))

    @property
    def dimensions(self) -> int:
        return self.hidden

    def count_tokens(self, text: str) -> int:
        return self.tokens.count_tokens(text)

    def encode(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        out = np.empty((len(texts), self.hidden), dtype=np.float32)
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            for batch, ids, mask in self.tokens.batches(texts, batch_size):
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
