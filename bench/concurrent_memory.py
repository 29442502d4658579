"""Memory of the whole product while 4 experts ingest at once, with the machine's one embedding
server (the default) against the model loaded in every run (EMBEDDING_SERVER=off), same run.

    .venv/bin/python bench/concurrent_memory.py [--experts 4] [--pages 12]

Starts the product as `make up` does, uploads the experts at once (a generated PDF each), and
samples the summed PSS (and RSS) of the launcher and everything it started every 0.2 s until
all are done. Goal: <= 1.5 GB in total with the embedding server.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.product import running_product  # noqa: E402
from tests.fixture_documents import make_pdf, sample_paragraphs  # noqa: E402

GOAL_MB = 1536


def measure(pdf: bytes, experts: int, **settings: str) -> dict[str, float]:
    with running_product(**settings) as product, httpx.Client(base_url=product.url, timeout=60) as client:
        idle, idle_rss = product.pss_mb(), product.rss_mb()
        ids = [
            client.post("/api/experts", data={"name": f"m{i}"}, files={"files": (f"m{i}.pdf", pdf)}).json()["expert"]["id"]
            for i in range(experts)
        ]
        peak, peak_rss, started = idle, idle_rss, time.monotonic()
        roles_at_peak = product.pss_by_role_mb()
        while time.monotonic() - started < 600:
            roles = product.pss_by_role_mb()
            if sum(roles.values()) > peak:
                roles_at_peak = roles
            peak, peak_rss = max(peak, sum(roles.values())), max(peak_rss, product.rss_mb())
            states = [client.get(f"/api/experts/{i}/progress").json()["progress"]["status"] for i in ids]
            if all(s in ("completed", "failed") for s in states):
                break
            time.sleep(0.2)
        return {"idle_mb": round(idle), "peak_mb": round(peak), "peak_rss_mb": round(peak_rss),
                "seconds": round(time.monotonic() - started, 1), "completed": states.count("completed"),
                "peak_pss_by_process_mb": {k: round(v) for k, v in sorted(roles_at_peak.items(), key=lambda kv: -kv[1])}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--experts", type=int, default=4)
    parser.add_argument("--pages", type=int, default=12)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        pages = ["\n\n".join(sample_paragraphs(6, seed=p)) for p in range(args.pages)]
        pdf = make_pdf(Path(tmp) / "doc.pdf", pages).read_bytes()
    results = {
        "embedding server (default)": measure(pdf, args.experts),
        "model in every run (EMBEDDING_SERVER=off)": measure(pdf, args.experts, EMBEDDING_SERVER="off"),
    }
    print(f"{args.experts} experts x {args.pages} pages at once: memory of the whole product (launcher + everything "
          "it started), PSS (shared pages counted once) and RSS (counted per process)")
    print(f"{'mode':45s} {'idle PSS':>9s} {'peak PSS':>9s} {'peak RSS':>9s} {'seconds':>8s} {'done':>5s}")
    for mode, r in results.items():
        print(f"{mode:45s} {r['idle_mb']:9.0f} {r['peak_mb']:9.0f} {r['peak_rss_mb']:9.0f} {r['seconds']:8.1f} "
              f"{r['completed']:5.0f}")
    for mode, r in results.items():
        print(f"at the peak, {mode}: " + ", ".join(f"{k} {v}" for k, v in r["peak_pss_by_process_mb"].items()))
    served = results["embedding server (default)"]["peak_mb"]
    print(f"goal: <= {GOAL_MB} MB in total: {'met' if served <= GOAL_MB else 'NOT met'} ({served:.0f} MB)")
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "concurrent_memory.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
