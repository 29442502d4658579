"""Pipeline wall time vs the same work done directly, for one long PDF.

    .venv/bin/python bench/pipeline_overhead.py [--pages 100] [--repeat 2]

Prints: the pipeline's wall time (in-process Dagster run of the ingest job, embedded
defaults, model already loaded); the time of the same work with no orchestration (text
extraction alone + the raw model encoding the same chunks alone); their ratio; the model's
load time, reported apart; and the share of wall time spent writing progress. The machine
is shared and noisy, so both sides are measured in the same process, alternately, and the
best of --repeat runs is kept for each.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import dagster as dg  # noqa: E402

from expert_pipeline.core.db import migrate  # noqa: E402
from expert_pipeline.core.settings import Settings  # noqa: E402
from expert_pipeline.adapters.factory import build_embedder  # noqa: E402
from expert_pipeline.text.chunking import chunk_pages  # noqa: E402
from expert_pipeline.text.extraction import extract_pages  # noqa: E402
from tests.fixture_documents import make_pdf, sample_paragraphs  # noqa: E402
from tests.pipeline_helpers import create_expert, run_ingest  # noqa: E402


def direct(pdf: Path, settings: Settings, encode: Callable[[list[str]], object] | None = None) -> dict[str, float]:
    """The same work with no orchestration: pypdf text, the same chunks, then `encode` (default:
    the pipeline's own encoder) over them in batches."""
    embedder = build_embedder(settings)
    encode = encode or embedder.embed
    started = time.perf_counter()
    pages = list(extract_pages(pdf, pdf.name))
    extracted = time.perf_counter()
    chunks = [c.text for c in chunk_pages(iter(pages), pdf.name, count_tokens=embedder.count_tokens,
                                          max_tokens=settings.chunk_max_tokens,
                                          overlap_tokens=settings.chunk_overlap_tokens)]
    chunked = time.perf_counter()
    it = iter(chunks)
    while batch := list(itertools.islice(it, settings.embedding_batch_size)):
        encode(batch)
    encoded = time.perf_counter()
    return {
        "seconds": encoded - started, "extract": extracted - started, "chunk": chunked - extracted,
        "encode": encoded - chunked, "chunks": len(chunks),
    }


def pipeline(pdf: Path, settings: Settings) -> dict[str, float]:
    expert_id = create_expert(settings, [pdf], name="bench")
    with dg.instance_for_test() as instance:
        started = time.perf_counter()
        result = run_ingest(settings, expert_id, instance)
        wall = time.perf_counter() - started
    assert result.success, "pipeline run failed"
    write_seconds = writes = ahead = 0.0
    for event in result.get_asset_materialization_events():
        meta = event.materialization.metadata
        write_seconds += meta["progress_write_seconds"].value
        writes += meta["progress_writes"].value
        if "chunks_embedded_ahead" in meta:
            ahead = meta["chunks_embedded_ahead"].value
    steps = {
        e.step_key: round(e.event_specific_data.duration_ms / 1000, 2)  # type: ignore[union-attr]
        for e in result.all_events
        if e.event_type_value == "STEP_SUCCESS"
    }
    return {"seconds": wall, "progress_write_seconds": write_seconds, "progress_writes": writes,
            "chunks_embedded_ahead": ahead, "steps": steps}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pages", type=int, default=117)  # the thesis issue 13 was measured on
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        settings = Settings(expert_pipeline_home=home / "home")
        settings.ensure_dirs()
        migrate(settings.resolved_database_url)
        pdf = make_pdf(home / "long.pdf", ["\n\n".join(sample_paragraphs(7, seed=p)) for p in range(args.pages)])
        load_seconds = build_embedder(settings).warm_up()
        # The plain way: sentence-transformers in fp32, batch 32 (what issue 13 measured against).
        from sentence_transformers import SentenceTransformer

        from expert_pipeline.adapters.local_model_files import bundled_model_dir

        plain = SentenceTransformer(str(bundled_model_dir()), device="cpu", local_files_only=True)
        directs, plains, pipes = [], [], []
        for i in range(args.repeat):
            directs.append(direct(pdf, settings))
            plains.append(direct(pdf, settings, lambda batch: plain.encode(batch, batch_size=32)))
            # A fresh home per run: the embedding cache would otherwise make every run after the
            # first one skip the encoding it is being compared on.
            fresh = Settings(expert_pipeline_home=home / f"run-{i}")
            fresh.ensure_dirs()
            migrate(fresh.resolved_database_url)
            pipes.append(pipeline(pdf, fresh))
        best_direct = min(directs, key=lambda r: r["seconds"])
        best_plain = min(plains, key=lambda r: r["seconds"])
        best_pipe = min(pipes, key=lambda r: r["seconds"])
    ratio = best_pipe["seconds"] / best_direct["seconds"]
    plain_ratio = best_pipe["seconds"] / best_plain["seconds"]
    share = best_pipe["progress_write_seconds"] / best_pipe["seconds"]
    figures = {
        "pages": args.pages, "chunks": best_direct["chunks"], "model_load_seconds": round(load_seconds, 2),
        "direct_seconds": round(best_direct["seconds"], 2), "direct_extract_seconds": round(best_direct["extract"], 2),
        "direct_encode_seconds": round(best_direct["encode"], 2),
        "plain_direct_seconds (pypdf + sentence-transformers fp32)": round(best_plain["seconds"], 2),
        "pipeline_seconds": round(best_pipe["seconds"], 2), "ratio_pipeline_to_direct": round(ratio, 3),
        "ratio_pipeline_to_plain_direct": round(plain_ratio, 3),
        "pipeline_step_seconds": best_pipe["steps"],
        "chunks_embedded_while_reading": int(best_pipe["chunks_embedded_ahead"]),
        "progress_writes": int(best_pipe["progress_writes"]),
        "progress_write_share_percent": round(100 * share, 3),
    }
    width = max(len(k) for k in figures)
    for key, value in figures.items():
        print(f"{key:<{width}}  {value}")
    print(f"goals: pipeline <= 0.6 of the plain direct way ({'met' if plain_ratio <= 0.6 else 'NOT met'}), "
          f"overhead over the same encoder <= 1.10 ({'met' if ratio <= 1.10 else 'NOT met'}), "
          f"progress share <= 1 % ({'met' if share <= 0.01 else 'NOT met'})")
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "pipeline_overhead.json").write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
