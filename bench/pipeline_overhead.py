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


def direct(pdf: Path, settings: Settings) -> dict[str, float]:
    embedder = build_embedder(settings)
    started = time.perf_counter()
    pages = list(extract_pages(pdf, pdf.name))
    extracted = time.perf_counter()
    chunks = [c.text for c in chunk_pages(iter(pages), pdf.name, count_tokens=embedder.count_tokens,
                                          max_tokens=settings.chunk_max_tokens,
                                          overlap_tokens=settings.chunk_overlap_tokens)]
    chunked = time.perf_counter()
    it = iter(chunks)
    while batch := list(itertools.islice(it, settings.embedding_batch_size)):
        embedder.embed(batch)
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
    write_seconds = writes = 0.0
    for event in result.get_asset_materialization_events():
        meta = event.materialization.metadata
        write_seconds += meta["progress_write_seconds"].value
        writes += meta["progress_writes"].value
    return {"seconds": wall, "progress_write_seconds": write_seconds, "progress_writes": writes}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pages", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        settings = Settings(expert_pipeline_home=home / "home")
        settings.ensure_dirs()
        migrate(settings.resolved_database_url)
        pdf = make_pdf(home / "long.pdf", ["\n\n".join(sample_paragraphs(7, seed=p)) for p in range(args.pages)])
        load_seconds = build_embedder(settings).warm_up()
        directs, pipes = [], []
        for i in range(args.repeat):
            directs.append(direct(pdf, settings))
            # A fresh home per run: the embedding cache would otherwise make every run after the
            # first one skip the encoding it is being compared on.
            fresh = Settings(expert_pipeline_home=home / f"run-{i}")
            fresh.ensure_dirs()
            migrate(fresh.resolved_database_url)
            pipes.append(pipeline(pdf, fresh))
        best_direct = min(directs, key=lambda r: r["seconds"])
        best_pipe = min(pipes, key=lambda r: r["seconds"])
    ratio = best_pipe["seconds"] / best_direct["seconds"]
    share = best_pipe["progress_write_seconds"] / best_pipe["seconds"]
    figures = {
        "pages": args.pages, "chunks": best_direct["chunks"], "model_load_seconds": round(load_seconds, 2),
        "direct_seconds": round(best_direct["seconds"], 2), "direct_extract_seconds": round(best_direct["extract"], 2),
        "direct_encode_seconds": round(best_direct["encode"], 2),
        "pipeline_seconds": round(best_pipe["seconds"], 2), "ratio_pipeline_to_direct": round(ratio, 3),
        "progress_writes": int(best_pipe["progress_writes"]),
        "progress_write_share_percent": round(100 * share, 3),
    }
    width = max(len(k) for k in figures)
    for key, value in figures.items():
        print(f"{key:<{width}}  {value}")
    print(f"goals: ratio <= 1.10 ({'met' if ratio <= 1.10 else 'NOT met'}), "
          f"progress share <= 1 % ({'met' if share <= 0.01 else 'NOT met'})")
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "pipeline_overhead.json").write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
