"""How honest is the ETA? Ingest a long document and compare the ETA shown at the half-way
point with the time the ingest really took from there; once for the first expert of a fresh
installation, once for the next (whose ETA includes the vector-storage time it learned).

    .venv/bin/python bench/eta_accuracy.py [--pages 80] [--batch 16]

Polls the progress row every 50 ms while `expert-pipeline ingest` works in its own process
(embedded defaults),
prints the ETA at 25/50/75 % of the chunks with the real remaining time and the error.
Goal: error <= 15 % at the half-way point.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import os
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import select  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402

from expert_pipeline.core.db import engine_for, migrate  # noqa: E402
from expert_pipeline.core.models import ExpertProcessingProgress  # noqa: E402
from expert_pipeline.core.progress_service import ExpertProcessingProgressService  # noqa: E402
from expert_pipeline.core.settings import Settings  # noqa: E402
from tests.fixture_documents import make_pdf, sample_paragraphs  # noqa: E402


def measure(home: Path, batch: int, pdf: Path) -> tuple[int, list[dict[str, float]]]:
    """Ingest `pdf` as a new expert through `expert-pipeline ingest` in its own process (as
    every Dagster run is); the ETA at 25/50/75 % of its chunks vs the real remaining time."""
    env = {**os.environ, "EXPERT_PIPELINE_HOME": str(home), "EMBEDDING_BATCH_SIZE": str(batch)}
    for name in ("DATABASE_URL", "DAGSTER_HOME"):
        env.pop(name, None)
    engine = engine_for(f"sqlite:///{home / 'progress.db'}")
    with Session(engine) as session:
        known = set(session.scalars(select(ExpertProcessingProgress.expert_id)))
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "expert-pipeline"), "ingest", "--name", "eta", str(pdf)],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    samples: list[tuple[float, str, int, int, float | None]] = []
    expert_id = None
    while proc.poll() is None:
        with Session(engine) as session:
            service = ExpertProcessingProgressService(session)
            if expert_id is None:
                fresh = set(session.scalars(select(ExpertProcessingProgress.expert_id))) - known
                expert_id = fresh.pop() if fresh else None
            r = service.get_progress(expert_id) if expert_id else None
        if r is not None:
            samples.append((time.monotonic(), r.stage, r.current_chunk, r.total_chunks, r.eta_seconds))
            if r.status == "completed":
                break
        time.sleep(0.05)
    finished = time.monotonic()
    assert proc.wait(timeout=120) == 0, "ingest failed"
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
    return (embedding[-1][3] if embedding else 0), rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pages", type=int, default=80)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        settings = Settings(expert_pipeline_home=home)
        settings.ensure_dirs()
        migrate(settings.resolved_database_url)
        # Two different documents (the embedding cache would make a repeat free): the first
        # expert of a fresh installation has no history of how long storing vectors takes; the
        # second has the first's.
        for label, seed in (("first expert (no history)", 0), ("next expert (with history)", 1000)):
            pages = ["\n\n".join(sample_paragraphs(7, seed=seed + p)) for p in range(args.pages)]
            pdf = make_pdf(Path(tmp) / f"long-{seed}.pdf", pages)
            results[label] = measure(home, args.batch, pdf)
    for label, (chunks, rows) in results.items():
        print(f"{label}: pages={args.pages} chunks={chunks} batch={args.batch}")
        for row in rows:
            print("  " + "  ".join(f"{k}={v}" for k, v in row.items()))
    _, steady = results["next expert (with history)"]
    half = next((r for r in steady if r["at_percent_of_chunks"] == 50), None)
    if half:
        print(f"goal: error at half-way <= 15 % ({'met' if half['error_percent'] <= 15 else 'NOT met'}, with history)")
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "eta_accuracy.json").write_text(json.dumps(
        {"pages": args.pages, "runs": {k: {"chunks": c, "rows": r} for k, (c, r) in results.items()}}, indent=2
    ))


if __name__ == "__main__":
    main()
