"""How honest is the ETA? Ingest a long document and compare the ETA shown at the half-way
point with the time the ingest really took from there.

    .venv/bin/python bench/eta_accuracy.py [--pages 80] [--batch 16]

Polls the progress row every 50 ms while an in-process run works (embedded defaults),
prints the ETA at 25/50/75 % of the chunks with the real remaining time and the error.
Goal: error <= 15 % at the half-way point.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import dagster as dg  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402

from expert_pipeline.core.db import engine_for, migrate  # noqa: E402
from expert_pipeline.core.progress_service import ExpertProcessingProgressService  # noqa: E402
from expert_pipeline.core.settings import Settings  # noqa: E402
from expert_pipeline.parts import build_embedder  # noqa: E402
from tests.fixture_documents import make_pdf, sample_paragraphs  # noqa: E402
from tests.pipeline_helpers import create_expert, run_ingest  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pages", type=int, default=80)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(expert_pipeline_home=Path(tmp) / "home", embedding_batch_size=args.batch)
        settings.ensure_dirs()
        migrate(settings.resolved_database_url)
        pdf = make_pdf(Path(tmp) / "long.pdf", ["\n\n".join(sample_paragraphs(7, seed=p)) for p in range(args.pages)])
        build_embedder(settings).warm_up()
        expert_id = create_expert(settings, [pdf])
        engine = engine_for(settings.resolved_database_url)
        samples: list[tuple[float, str, int, int, float | None]] = []
        stop = threading.Event()

        def poll() -> None:
            while not stop.is_set():
                with Session(engine) as session:
                    r = ExpertProcessingProgressService(session).get_progress(expert_id)
                if r is not None:
                    samples.append((time.monotonic(), r.stage, r.current_chunk, r.total_chunks, r.eta_seconds))
                time.sleep(0.05)

        thread = threading.Thread(target=poll)
        thread.start()
        with dg.instance_for_test() as instance:
            assert run_ingest(settings, expert_id, instance).success
        finished = time.monotonic()
        stop.set()
        thread.join()
    embedding = [s for s in samples if s[1] == "embedding" and s[3] > 0 and s[4] is not None]
    rows = []
    for share in (0.25, 0.5, 0.75):
        at = next((s for s in embedding if s[2] >= share * s[3]), None)
        if at is None:
            continue
        actual = finished - at[0]
        rows.append({"at_percent_of_chunks": int(share * 100), "eta_seconds": round(at[4], 2),
                     "actual_remaining_seconds": round(actual, 2),
                     "error_percent": round(100 * abs(at[4] - actual) / actual, 1)})
    total_chunks = embedding[-1][3] if embedding else 0
    print(f"pages={args.pages} chunks={total_chunks} batch={args.batch}")
    for row in rows:
        print("  ".join(f"{k}={v}" for k, v in row.items()))
    half = next((r for r in rows if r["at_percent_of_chunks"] == 50), None)
    if half:
        print(f"goal: error at half-way <= 15 % ({'met' if half['error_percent'] <= 15 else 'NOT met'})")
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "eta_accuracy.json").write_text(json.dumps({"pages": args.pages, "chunks": total_chunks, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
