"""Peak memory of ingesting a long PDF, and a plot of progress, throughput and memory over time.

    .venv/bin/python bench/ingest_profile.py [--pages 100] [--batch-size N]

Runs the ingest as a user would: `expert-pipeline ingest --name Profile long.pdf` in its own
process, on embedded defaults (the local all-MiniLM-L6-v2 on the CPU, LanceDB, SQLite) in a
temporary EXPERT_PIPELINE_HOME; no setting from this shell's environment reaches it (not
DATABASE_URL, nor any other variable the product reads), except --batch-size if given.
Meanwhile it samples

- the resident memory (RSS) of the whole process tree, the command and its children (the
  text-extraction worker), summed, every 50 ms;
- the expert's progress row through ExpertProcessingProgressService every 250 ms.

Afterwards it measures a baseline in a bare process: RSS once Python, Dagster and torch are
imported, once the model is loaded, and after encoding one batch of chunk-sized texts, so the
reader sees what the pipeline itself adds on top of the model.

Prints: pages, chunks, wall time, peak RSS of the tree, the kernel's peak of the largest
single process (getrusage RUSAGE_CHILDREN, a cross-check the 50 ms sampling cannot miss),
the baseline, whether the goal (<= 1.5 GB, 1536 MB; MB = 2**20 bytes) is met, and the path
of the plot, bench/figures/ingest_timeline.png (committed, shown in bench/README.md). Writes
the figures and every raw sample to bench/results/ingest_profile.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import select  # noqa: E402
from sqlalchemy.exc import SQLAlchemyError  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402

from expert_pipeline.core.db import engine_for  # noqa: E402
from expert_pipeline.core.models import Expert, ExpertFile  # noqa: E402
from expert_pipeline.core.progress_service import ExpertProcessingProgressService  # noqa: E402
from expert_pipeline.core.settings import Settings  # noqa: E402
from tests.fixture_documents import make_pdf, sample_paragraphs  # noqa: E402

FIGURE = ROOT / "bench" / "figures" / "ingest_timeline.png"
RESULTS = ROOT / "bench" / "results" / "ingest_profile.json"
GOAL_MB = 1536
MB = 2**20
MEMORY_EVERY = 0.05
PROGRESS_EVERY = 0.25

# The words `expert-pipeline ingest` shows for each stage (expert_pipeline/cli/ingest.py).
STAGES = {
    "starting": ("start-up (no progress row yet)", "#f3f4f6"),
    "file_processing": ("preparing files", "#c7d2fe"),
    "text_extraction": ("extracting text", "#bbf7d0"),
    "embedding": ("embedding", "#fde68a"),
    "pinecone_storage": ("storing vectors (LanceDB)", "#fbcfe8"),
    "complete": ("complete (the command exiting)", "#e5e7eb"),
    "failed": ("failed", "#fecaca"),
}

# Run in a bare process after the ingest: what Python + Dagster + torch + the model cost alone.
BASELINE = r"""
import json, resource, sys
import psutil
me = psutil.Process()
mb = lambda: me.memory_info().rss / 2**20
out = {"python_mb": mb()}
import torch  # noqa: F401  (the pipeline's run process imports it too)
from expert_pipeline.adapters.embedder import LocalEmbedder  # imports Dagster as well
out["imports_mb"] = mb()
embedder = LocalEmbedder()
out["model_load_seconds"] = embedder.warm_up()
out["model_loaded_mb"] = mb()
args = json.load(sys.stdin)
texts, current = [], ""
for sentence in " ".join(args["paragraphs"]).split(". "):
    candidate = f"{current}{sentence}. "
    if current and embedder.count_tokens(candidate) > args["max_tokens"]:
        texts.append(current.strip())
        current = f"{sentence}. "
        if len(texts) == args["batch"]:
            break
    else:
        current = candidate
embedder.embed(texts)
out["one_batch_mb"] = mb()
out["batch_texts"] = len(texts)
out["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(out))
"""


def clean_env(home: Path, batch_size: int | None) -> dict[str, str]:
    """This shell's environment minus every variable Settings reads (it matches names without
    regard to case), so the run gets the embedded defaults whatever is exported here."""
    ours = {name.lower() for name in Settings.model_fields} | {"dagster_home"}
    env = {k: v for k, v in os.environ.items() if k.lower() not in ours}
    env["EXPERT_PIPELINE_HOME"] = str(home)
    if batch_size is not None:
        env["EMBEDDING_BATCH_SIZE"] = str(batch_size)
    return env


def tree_rss(proc: psutil.Process) -> tuple[float, float]:
    """(RSS of the process, RSS of all its descendants) in MB; processes that end while being
    read count as zero."""
    try:
        main = proc.memory_info().rss
        children = proc.children(recursive=True)
    except psutil.Error:
        return 0.0, 0.0
    rest = 0
    for child in children:
        try:
            rest += child.memory_info().rss
        except psutil.Error:
            pass
    return main / MB, rest / MB


def progress_sample(session: Session, expert_id: str, t: float, started_wall: float) -> dict[str, Any] | None:
    record = ExpertProcessingProgressService(session).get_progress(expert_id)
    if record is None:
        return None
    return {
        "t": round(t, 3),
        # When the row was last written, on the same clock: exact batch times, where `t` is
        # quantised to the 250 ms polling.
        "updated_t": round(record.updated_at.timestamp() - started_wall, 3),
        "stage": record.stage, "status": record.status, "percent": record.progress_percentage,
        "current_chunk": record.current_chunk, "total_chunks": record.total_chunks,
        "current_batch": record.current_batch, "total_batches": record.total_batches,
        "chunks_per_second": record.chunks_per_second, "eta_seconds": record.eta_seconds,
    }


def sample_memory(proc: psutil.Process, started: float, memory: list[tuple[float, float, float]],
                  stop: threading.Event) -> None:
    """Every 50 ms until `stop`: (seconds, command MB, children MB). A thread of its own, so a
    database read that waits on the writer cannot delay it past a peak."""
    while not stop.is_set():
        now = time.monotonic() - started
        main_mb, children_mb = tree_rss(proc)
        if main_mb:
            memory.append((round(now, 3), round(main_mb, 1), round(children_mb, 1)))
        stop.wait(MEMORY_EVERY)


def run_ingest(pdf: Path, home: Path, batch_size: int | None, log_dir: Path) -> dict[str, Any]:
    env = clean_env(home, batch_size)
    # The database the command will use; model_construct reads nothing from this environment.
    db_url = Settings.model_construct(expert_pipeline_home=home.resolve()).resolved_database_url
    db_file = home / "progress.db"
    engine = engine_for(db_url)
    memory: list[tuple[float, float, float]] = []
    samples: list[dict[str, Any]] = []
    expert_id: str | None = None
    stop = threading.Event()
    with open(log_dir / "stdout.txt", "wb") as out, open(log_dir / "stderr.txt", "wb") as err:
        started_wall = time.time()
        started = time.monotonic()
        # Output to files, not pipes: Dagster logs enough to fill a pipe nobody reads until the end.
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "expert-pipeline"), "ingest", "--name", "Profile", str(pdf)],
            cwd=ROOT, env=env, stdout=out, stderr=err,
        )
        sampler = threading.Thread(target=sample_memory, args=(psutil.Process(proc.pid), started, memory, stop))
        sampler.start()
        while proc.poll() is None:
            now = time.monotonic() - started
            if db_file.exists():
                try:
                    with Session(engine) as session:
                        if expert_id is None:  # the only expert in this fresh home, once it exists
                            expert_id = session.scalar(select(Expert.id))
                        sample = progress_sample(session, expert_id, now, started_wall) if expert_id else None
                except SQLAlchemyError:
                    sample = None  # the schema is still being created
                if sample is not None:
                    samples.append(sample)
            time.sleep(max(0.0, PROGRESS_EVERY - (time.monotonic() - started - now)))
        wall = time.monotonic() - started
        stop.set()
        sampler.join()
    # The kernel's count: the largest single descendant (waited for) of this process, in kB.
    peak_single = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    result: dict[str, Any] = {
        "returncode": proc.returncode, "wall": wall, "peak_single_mb": peak_single, "memory": memory,
        "samples": samples, "events": [], "pages": None, "final": None,
        "stderr_tail": (log_dir / "stderr.txt").read_text(errors="replace")[-3000:],
    }
    with Session(engine) as session:
        expert_id = expert_id or session.scalar(select(Expert.id))
        if expert_id is None:
            return result
        result["final"] = progress_sample(session, expert_id, wall, started_wall)
        result["pages"] = session.scalar(select(ExpertFile.pages).where(ExpertFile.expert_id == expert_id))
        result["events"] = [
            {"t": round(e.created_at.timestamp() - started_wall, 3), "stage": e.stage, "status": e.status,
             "message": e.message}
            for e in ExpertProcessingProgressService(session).list_events(expert_id)
        ]
    engine.dispose()
    return result


def measure_baseline(env: dict[str, str], max_tokens: int, batch: int) -> dict[str, Any]:
    paragraphs = sample_paragraphs(40 * batch, seed=1)  # text for `batch` full chunks, with room to spare
    done = subprocess.run(
        [sys.executable, "-c", BASELINE], cwd=ROOT, env=env, capture_output=True, text=True, check=True,
        input=json.dumps({"paragraphs": paragraphs, "max_tokens": max_tokens, "batch": batch}),
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def stage_bands(events: list[dict[str, Any]], end: float) -> list[tuple[str, float, float]]:
    """(stage, start, end) from the expert's history, which records every stage change with its
    exact time; before the first entry the command is starting up."""
    bands: list[tuple[str, float, float]] = []
    current, since = "starting", 0.0
    for event in events:
        if event["stage"] != current:
            bands.append((current, since, event["t"]))
            current, since = event["stage"], event["t"]
    bands.append((current, since, end))
    return [b for b in bands if b[2] > b[1]]


def batch_rates(
    samples: list[dict[str, Any]], embedding: tuple[float, float], total_chunks: int
) -> list[tuple[float, float, float]]:
    """(from, to, chunks/s) for each progress write that moved the chunk count, timed by the
    row's own updated_at. The first interval starts at the embedding stage, so it includes the
    model load. The last batch's write is followed within milliseconds by the next stage's, so
    polling rarely sees it: the stage's end (from the history) stands in for it."""
    rates = []
    last_t, last_chunks = embedding[0], 0
    points = [(s["updated_t"], s["current_chunk"]) for s in samples if s["stage"] == "embedding"]
    for t, chunks in [*points, (embedding[1], total_chunks)]:
        if chunks > last_chunks and t > last_t:
            rates.append((last_t, t, (chunks - last_chunks) / (t - last_t)))
            last_t, last_chunks = t, chunks
    return rates


def reported_rates(samples: list[dict[str, Any]], embedding_end: float) -> list[tuple[float, float]]:
    """(time, chunks/s) each time the pipeline's own figure changed, at the write that changed
    it (the last one is first seen after the stage ended, so it is placed at the stage's end)."""
    points: list[tuple[float, float]] = []
    for s in samples:
        rate = s["chunks_per_second"]
        if rate and (not points or rate != points[-1][1]):
            points.append((min(s["updated_t"], embedding_end), rate))
    return points


def plot(run: dict[str, Any], baseline: dict[str, Any], figures: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    samples, memory, wall = run["samples"], run["memory"], run["wall"]
    bands = stage_bands(run["events"], wall)
    fig, (ax_p, ax_r, ax_m) = plt.subplots(
        3, 1, figsize=(13, 9.5), sharex=True, gridspec_kw={"height_ratios": [1.1, 1, 1.1]}
    )
    for ax in (ax_p, ax_r, ax_m):
        for stage, a, b in bands:
            ax.axvspan(a, b, color=STAGES.get(stage, (stage, "#eee"))[1], alpha=0.7, lw=0, zorder=0)
        ax.grid(alpha=0.3, zorder=1)
    stage_handles = [Patch(color=STAGES.get(s, (s, "#eee"))[1], label=STAGES.get(s, (s, ""))[0])
                     for s in dict.fromkeys(b[0] for b in bands)]

    # 1. Progress as the row showed it (the dashboard's and the terminal bar's number).
    t = [s["t"] for s in samples] + [wall]
    pct = [s["percent"] for s in samples] + [run["final"]["percent"]]
    ax_p.step(t, pct, where="post", color="#1d4ed8", lw=2, zorder=3)
    ax_p.set_ylabel("progress shown (%)")
    ax_p.set_ylim(0, 104)
    # Legends beside the panels, where they cannot hide a line.
    beside = {"loc": "upper left", "bbox_to_anchor": (1.01, 1.0), "fontsize": 8, "borderaxespad": 0}
    ax_p.legend(handles=stage_handles, title="stage (background, all panels)", title_fontsize=8, **beside)
    ax_p.set_title(
        f"`expert-pipeline ingest` of a {figures['pages']}-page PDF: {figures['chunks']} chunks, "
        f"{figures['batches']} batches of {figures['batch_size']}\n"
        f"embedded defaults (local all-MiniLM-L6-v2 on the CPU, LanceDB, SQLite), "
        f"{os.cpu_count()} CPU cores", fontsize=10,
    )

    # 2. Throughput: per batch from the row's timestamps, and the pipeline's own smoothed rate.
    embedding = next(((a, b) for s, a, b in bands if s == "embedding"), None)
    reported: list[tuple[float, float]] = []
    rates: list[tuple[float, float, float]] = []
    if embedding is not None:
        rates = batch_rates(samples, embedding, run["final"]["total_chunks"])
        if rates:
            xs = [r[0] for r in rates] + [rates[-1][1]]
            ys = [r[2] for r in rates] + [rates[-1][2]]
            ax_r.step(xs, ys, where="post", color="#b45309", lw=2, zorder=3,
                      label="per batch: chunks written / time since the previous write\n"
                            "(the first batch includes loading the model)")
        reported = reported_rates(samples, embedding[1])
        if reported:
            ax_r.plot([r[0] for r in reported], [r[1] for r in reported], "o--", color="#7c2d12", ms=6,
                      zorder=4, label="reported by the pipeline (chunks_per_second: smoothed,\n"
                                      "EWMA over batches, model load excluded)")
        ax_r.hlines(figures["embedding_chunks_per_second"], *embedding, color="#78350f",
                    ls=":", lw=1.5, zorder=3,
                     label=f"embedding stage average: {figures['embedding_chunks_per_second']:.1f} chunks/s")
        ax_r.legend(**beside)
    ax_r.set_ylabel("throughput (chunks/s)")
    ax_r.set_ylim(0, 1.15 * max([figures["embedding_chunks_per_second"], 1.0]
                                + [r[1] for r in reported] + [r[2] for r in rates]))

    # 3. Memory: the command's process and its children, stacked; baseline and goal for scale.
    mt = [m[0] for m in memory]
    ax_m.stackplot(mt, [m[1] for m in memory], [m[2] for m in memory], colors=["#059669", "#6ee7b7"],
                   labels=["`expert-pipeline ingest` process", "its children (text-extraction worker)"],
                   zorder=2)
    peak_i = max(range(len(memory)), key=lambda i: memory[i][1] + memory[i][2])
    peak = memory[peak_i][1] + memory[peak_i][2]
    ax_m.annotate(f"peak {peak:.0f} MB", (mt[peak_i], peak), xytext=(0, 12), textcoords="offset points",
                  ha="center", fontsize=9, arrowprops={"arrowstyle": "-", "color": "#065f46"}, zorder=5)
    ax_m.axhline(GOAL_MB, color="#dc2626", ls="--", lw=1.2, label=f"goal: {GOAL_MB} MB (1.5 GB)", zorder=3)
    ax_m.axhline(baseline["model_loaded_mb"], color="#1f2937", ls=":", lw=1.2, zorder=3,
                 label=f"bare process, model loaded: {baseline['model_loaded_mb']:.0f} MB")
    ax_m.axhline(baseline["peak_mb"], color="#6b7280", ls="-.", lw=1.2, zorder=3,
                 label=f"same, peak while encoding one batch: {baseline['peak_mb']:.0f} MB")
    ax_m.set_ylabel("resident memory, RSS (MB)")
    ax_m.set_ylim(0, max(GOAL_MB, peak) * 1.1)
    ax_m.legend(**beside)
    ax_m.set_xlabel("seconds since `expert-pipeline ingest` started")
    ax_m.set_xlim(0, wall)
    fig.tight_layout()
    FIGURE.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(FIGURE, dpi=100)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pages", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=None,
                        help="EMBEDDING_BATCH_SIZE for the run (default: the product's default)")
    args = parser.parse_args()
    batch_size = args.batch_size or Settings.model_fields["embedding_batch_size"].default
    max_tokens = Settings.model_fields["chunk_max_tokens"].default
    with tempfile.TemporaryDirectory(prefix="ingest-profile-") as tmp:
        home = Path(tmp) / "home"
        pdf = make_pdf(Path(tmp) / "long.pdf", ["\n\n".join(sample_paragraphs(7, seed=p)) for p in range(args.pages)])
        run = run_ingest(pdf, home, args.batch_size, Path(tmp))
        if run["returncode"] != 0 or run["final"] is None or run["final"]["status"] != "completed":
            print(f"ingest failed (exit {run['returncode']}):\n{run['stderr_tail']}", file=sys.stderr)
            return 1
        baseline = measure_baseline(clean_env(Path(tmp) / "baseline-home", None), max_tokens, batch_size)

    final, memory = run["final"], run["memory"]
    peak_tree = max(m[1] + m[2] for m in memory)
    peak_main = max(m[1] for m in memory)
    bands = stage_bands(run["events"], run["wall"])
    seconds = {stage: round(sum(b - a for s, a, b in bands if s == stage), 2) for stage in dict.fromkeys(b[0] for b in bands)}
    figures: dict[str, Any] = {
        "pages": run["pages"], "chunks": final["total_chunks"], "batch_size": batch_size,
        "batches": final["total_batches"], "wall_seconds": round(run["wall"], 2),
        "stage_seconds": seconds,
        "embedding_chunks_per_second": round(final["total_chunks"] / seconds.get("embedding", float("nan")), 2),
        "peak_tree_mb": round(peak_tree), "peak_main_process_mb": round(peak_main),
        "peak_children_mb": round(max(m[2] for m in memory)),
        "peak_single_process_mb_kernel": round(run["peak_single_mb"]),
        "baseline_imports_mb": round(baseline["imports_mb"]),
        "baseline_model_loaded_mb": round(baseline["model_loaded_mb"]),
        "baseline_after_one_batch_mb": round(baseline["one_batch_mb"]),
        "baseline_peak_mb_kernel": round(baseline["peak_mb"]),
        # Kernel peak against kernel peak: the largest process of the ingest vs the bare model.
        "pipeline_adds_mb": round(run["peak_single_mb"] - baseline["peak_mb"]),
        "goal_mb": GOAL_MB,
        "goal_met": max(peak_tree, run["peak_single_mb"]) <= GOAL_MB,
        "memory_samples": len(memory), "progress_samples": len(run["samples"]),
    }
    plot(run, baseline, figures)

    rows = [
        ("pages", figures["pages"]),
        ("chunks", f"{figures['chunks']} ({figures['batches']} batches of {batch_size})"),
        ("wall time", f"{run['wall']:.1f} s (process start and model load included)"),
        ("time per stage", ", ".join(f"{STAGES.get(s, (s,))[0]} {v:.1f} s" for s, v in seconds.items())),
        ("embedding throughput", f"{figures['embedding_chunks_per_second']:.1f} chunks/s (stage average)"),
        ("peak RSS, process tree", f"{peak_tree:.0f} MB (sum of the command and its children, every 50 ms)"),
        ("  of which the command", f"{peak_main:.0f} MB at most; its children {figures['peak_children_mb']} MB at most"),
        ("peak RSS, largest process", f"{run['peak_single_mb']:.0f} MB (kernel's ru_maxrss, RUSAGE_CHILDREN)"),
        ("baseline, bare process", f"{baseline['imports_mb']:.0f} MB with Dagster + torch imported, "
                                   f"{baseline['model_loaded_mb']:.0f} MB with the model loaded, "
                                   f"peak {baseline['peak_mb']:.0f} MB while encoding one batch of "
                                   f"{baseline['batch_texts']} chunk-sized texts (kernel's ru_maxrss)"),
        ("pipeline adds", f"{figures['pipeline_adds_mb']} MB (largest process's peak minus the bare process's)"),
        ("goal <= 1536 MB", "met" if figures["goal_met"] else "NOT met"),
        ("plot", str(FIGURE.relative_to(ROOT))),
    ]
    width = max(len(k) for k, _ in rows)
    print()
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "measured_at": datetime.now().astimezone().isoformat(timespec="seconds"),
        "figures": figures, "baseline": baseline, "events": run["events"], "progress_samples": run["samples"],
        "final_progress": final,
        "memory_samples": {"columns": ["t_seconds", "command_mb", "children_mb"], "rows": memory},
    }, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
