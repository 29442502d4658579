"""Peak memory of ingesting a long PDF, and a plot of progress and throughput over time.

    .venv/bin/python bench/ingest_profile.py [--pages 100]

Runs the ingest as a user would, `expert-pipeline ingest` in its own process (embedded
defaults: the local model on the CPU, LanceDB, SQLite, in a temporary EXPERT_PIPELINE_HOME),
and meanwhile samples the resident memory of its whole process tree (the run and its
extraction worker) every 50 ms and the expert's progress row every 250 ms. Prints the peak
memory (goal <= 1.5 GB), and draws progress, throughput and memory over time into
bench/figures/ingest_timeline.png.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.fixture_documents import make_pdf, sample_paragraphs  # noqa: E402

FIGURE = ROOT / "bench" / "figures" / "ingest_timeline.png"
STAGE_COLOURS = {
    "file_processing": "#c7d2fe", "text_extraction": "#bbf7d0", "embedding": "#fde68a",
    "pinecone_storage": "#fbcfe8", "complete": "#e5e7eb", "failed": "#fecaca",
}


def tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def progress_row(db: Path) -> tuple[str, str, float, int, int] | None:
    if not db.exists():
        return None
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as conn:
            return conn.execute(
                "SELECT stage, status, progress_percentage, current_chunk, total_chunks FROM expert_processing_progress"
            ).fetchone()
    except sqlite3.Error:
        return None  # not created yet, or busy for a moment


def plot(samples: list[dict[str, float | str]], memory: list[tuple[float, float]], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_progress, ax_rate, ax_memory) = plt.subplots(3, 1, figsize=(9, 8), sharex=True)
    t = [float(s["t"]) for s in samples]
    # Stage bands behind the progress line.
    start = 0
    for i in range(1, len(samples) + 1):
        if i == len(samples) or samples[i]["stage"] != samples[start]["stage"]:
            end = t[i] if i < len(samples) else t[-1]
            stage = str(samples[start]["stage"])
            ax_progress.axvspan(t[start], end, color=STAGE_COLOURS.get(stage, "#eee"), alpha=0.6, lw=0,
                                label=stage.replace("_", " "))
            start = i
    ax_progress.plot(t, [float(s["percent"]) for s in samples], color="#1d4ed8", lw=2)
    ax_progress.set_ylabel("progress (%)")
    ax_progress.set_ylim(0, 102)
    handles, labels = ax_progress.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    ax_progress.legend(unique.values(), unique.keys(), loc="lower right", fontsize=8)
    ax_progress.set_title(title)

    # The row moves once per batch, so the rate is taken over a trailing 3-second window, and
    # the embedding stage's average is drawn alongside.
    embedding = [x for x in samples if x["stage"] == "embedding"]
    rate_t, rate = [], []
    for i, b in enumerate(embedding):
        a = next(x for x in embedding[: i + 1] if float(x["t"]) >= float(b["t"]) - 3.0)
        if float(b["t"]) > float(a["t"]):
            rate_t.append(float(b["t"]))
            rate.append((float(b["chunks"]) - float(a["chunks"])) / (float(b["t"]) - float(a["t"])))
    ax_rate.plot(rate_t, rate, color="#b45309", lw=2, label="trailing 3 s")
    if len(embedding) > 1:
        span = float(embedding[-1]["t"]) - float(embedding[0]["t"])
        average = (float(samples[-1]["total_chunks"])) / span if span > 0 else 0.0
        ax_rate.axhline(average, color="#78350f", ls="--", lw=1, label=f"stage average {average:.0f}/s")
    ax_rate.legend(loc="lower right", fontsize=8)
    ax_rate.set_ylabel("chunks embedded / s")
    ax_rate.set_ylim(bottom=0)

    ax_memory.plot([m[0] for m in memory], [m[1] for m in memory], color="#047857", lw=2)
    ax_memory.axhline(1536, color="#dc2626", ls="--", lw=1, label="goal: 1.5 GB")
    ax_memory.set_ylabel("resident memory (MB)")
    ax_memory.set_xlabel("seconds since the ingest command started")
    ax_memory.set_ylim(bottom=0)
    ax_memory.legend(loc="lower right", fontsize=8)
    for ax in (ax_progress, ax_rate, ax_memory):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    FIGURE.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(FIGURE, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pages", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        pdf = make_pdf(Path(tmp) / "long.pdf", ["\n\n".join(sample_paragraphs(7, seed=p)) for p in range(args.pages)])
        env = {**os.environ, "EXPERT_PIPELINE_HOME": str(home)}
        for name in ("DATABASE_URL", "DAGSTER_HOME"):
            env.pop(name, None)
        started = time.monotonic()
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "expert-pipeline"), "ingest", "--name", "Profile", str(pdf)],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        watched = psutil.Process(proc.pid)
        memory: list[tuple[float, float]] = []
        samples: list[dict[str, float | str]] = []
        next_row = 0.0
        while proc.poll() is None:
            now = time.monotonic() - started
            memory.append((now, tree_rss(watched) / 2**20))
            if now >= next_row:
                row = progress_row(home / "progress.db")
                if row is not None:
                    samples.append({"t": now, "stage": row[0], "status": row[1], "percent": row[2],
                                    "chunks": row[3], "total_chunks": row[4]})
                next_row = now + 0.25
            time.sleep(0.05)
        wall = time.monotonic() - started
        stderr = proc.stderr.read().decode() if proc.stderr else ""
        final = progress_row(home / "progress.db")
    if proc.returncode != 0 or final is None or final[1] != "completed":
        print(f"ingest failed (exit {proc.returncode}):\n{stderr[-2000:]}", file=sys.stderr)
        return 1
    samples.append({"t": wall, "stage": final[0], "status": final[1], "percent": final[2], "chunks": final[3],
                    "total_chunks": final[4]})
    peak_tree = max(m[1] for m in memory)
    # Cross-check from the kernel: the largest single descendant's peak (kB on Linux).
    peak_single = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    title = f"`expert-pipeline ingest` of a {args.pages}-page PDF ({final[4]} chunks), embedded defaults"
    plot(samples, memory, title)

    print(f"\n{args.pages}-page PDF, {final[4]} chunks, wall time {wall:.1f} s (process start and model load included)")
    print(f"peak resident memory, whole process tree: {peak_tree:.0f} MB (sampled every 50 ms)")
    print(f"peak resident memory, largest single process: {peak_single:.0f} MB (kernel's ru_maxrss)")
    print(f"goal <= 1536 MB: {'met' if max(peak_tree, peak_single) <= 1536 else 'NOT met'}")
    print(f"plot: {FIGURE.relative_to(ROOT)}")
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "ingest_profile.json").write_text(json.dumps({
        "pages": args.pages, "chunks": final[4], "wall_seconds": round(wall, 2),
        "peak_tree_mb": round(peak_tree), "peak_single_process_mb": round(peak_single),
        "samples": samples, "memory_mb": [(round(t, 2), round(m)) for t, m in memory],
    }, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
