"""`make bench`: run every benchmark script in turn; each prints its own table and writes
bench/results/<name>.json."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = [
    ["encoder_backends.py", "--repeat", "3"],
    ["pipeline_overhead.py", "--pages", "117", "--repeat", "2"],
    ["eta_accuracy.py", "--pages", "80", "--batch", "16"],
    ["upload_latency.py", "--experts", "3"],
    ["sse_latency.py"],
    ["api_load.py", "--seconds", "5", "--repeat", "2"],
    ["ingest_profile.py", "--pages", "100"],
    ["concurrent_memory.py"],
    ["retrieval_quality.py"],
    ["ocr_quality.py"],
    ["scale_out.py"],
]


def run(script: str, args: list[str]) -> tuple[int, list[str]]:
    """Run one script, echoing its output; its exit code and its lines that state a goal."""
    proc = subprocess.Popen(
        [sys.executable, str(HERE / script), *args],
        cwd=HERE.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    goals = []
    assert proc.stdout is not None
    for line in proc.stdout:
        print(line, end="", flush=True)
        if line.lower().startswith("goal"):
            goals.append(line.strip())
    return proc.wait(), goals


def main() -> int:
    failed = []
    summary: list[str] = []
    begun = time.monotonic()
    for script, *args in SCRIPTS:
        print(f"\n== {script} {' '.join(args)}", flush=True)
        started = time.monotonic()
        code, goals = run(script, args)
        print(f"-- {script}: exit {code} in {time.monotonic() - started:.0f} s", flush=True)
        summary += [f"{script}: {goal}" for goal in goals]
        if code:
            failed.append(script)
    # Every goal line of the run, side by side, so one screen says what is met and what is not.
    print("\n== goals\n" + "\n".join(summary))
    print(f"\nall benchmarks: {time.monotonic() - begun:.0f} s")
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
