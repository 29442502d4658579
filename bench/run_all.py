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
]


def main() -> int:
    failed = []
    begun = time.monotonic()
    for script, *args in SCRIPTS:
        print(f"\n== {script} {' '.join(args)}", flush=True)
        started = time.monotonic()
        code = subprocess.call([sys.executable, str(HERE / script), *args], cwd=HERE.parent)
        print(f"-- {script}: exit {code} in {time.monotonic() - started:.0f} s", flush=True)
        if code:
            failed.append(script)
    print(f"\nall benchmarks: {time.monotonic() - begun:.0f} s")
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
