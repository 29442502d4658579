"""Status API under load: `GET /api/experts/{id}/progress` against a bare ASGI endpoint.

    .venv/bin/python bench/api_load.py [--seconds 5] [--repeat 2] [--clients 50 200]

Both are served by uvicorn in their own process with the same options (one worker, no access
log); the real one reads the progress row from the database (SQLite, embedded default) on
every request and presents it exactly as the API does; the bare one answers the same bytes
from memory. The load generator is wrk (Debian package `wrk`), a separate process, so
neither server's event loop generates its own load. The two alternate, and the best of
--repeat runs is kept for each, because the machine is shared and noisy.
Prints requests/s, p50 and p99 per target and client count, and the ratio app/bare.
Goals: ratio >= 0.5; p99 < 50 ms at 200 clients.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy.orm import Session  # noqa: E402

from expert_pipeline.core.db import engine_for, migrate  # noqa: E402
from expert_pipeline.core.progress_service import ExpertProcessingProgressService  # noqa: E402

UVICORN_OPTIONS = ["--host", "127.0.0.1", "--log-level", "warning", "--no-access-log"]
UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def seed(database_url: str) -> str:
    """One expert half-way through embedding, as a dashboard would poll it."""
    migrate(database_url)
    expert_id = "bench-expert"
    with Session(engine_for(database_url), expire_on_commit=False) as session:
        service = ExpertProcessingProgressService(session)
        service.create_progress_record(expert_id=expert_id, agent_id="agent-1", total_files=3)
        service.start_run(expert_id, run_id="bench-run", total_files=3)
        service.update_progress(
            expert_id=expert_id, stage="embedding", current_file="handbook.pdf", current_file_index=1,
            current_batch=12, total_batches=30, current_chunk=768, total_chunks=1920, processed_files=1,
            progress_percentage=52.5, details={"batch": "12/30", "chunks": "768/1920", "filename": "handbook.pdf"},
            eta_seconds=41.0, chunks_per_second=46.8,
        )
    return expert_id


class Server:
    def __init__(self, target: list[str], env: dict[str, str]) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "uvicorn"), *target, "--port", str(self.port), *UVICORN_OPTIONS],
            cwd=ROOT, env=env, start_new_session=True,
        )
        self.url = f"http://127.0.0.1:{self.port}"

    def wait(self, path: str) -> bytes:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                response = httpx.get(self.url + path, timeout=2)
                if response.status_code == 200:
                    return response.content
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"server on port {self.port} did not come up")

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(timeout=30)


def _millis(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if not match:
        raise ValueError(f"unexpected wrk latency {text!r}")
    return float(match.group(1)) * UNITS[match.group(2)]


def wrk(url: str, clients: int, seconds: int) -> dict[str, float]:
    out = subprocess.run(
        ["wrk", "-t2", f"-c{clients}", f"-d{seconds}s", "--latency", "--timeout", "10s", url],
        capture_output=True, text=True, check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    latency = dict(re.findall(r"^\s+(50|99)%\s+(\S+)\s*$", out, re.MULTILINE))
    if "50" not in latency or "99" not in latency:
        raise RuntimeError(f"wrk printed no latency distribution:\n{out}")
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)$", out, re.MULTILINE)
    return {
        "rps": rps, "p50_ms": _millis(latency["50"]), "p99_ms": _millis(latency["99"]),
        "non_2xx": float(errors.group(1)) if errors else 0.0,
        "socket_errors": 1.0 if socket_errors else 0.0,
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--clients", type=int, nargs="+", default=[50, 200])
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is not installed: apt-get install wrk", file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        env = {**os.environ, "EXPERT_PIPELINE_HOME": str(home)}
        env.pop("DATABASE_URL", None)
        expert_id = seed(f"sqlite:///{home / 'progress.db'}")
        path = f"/api/experts/{expert_id}/progress"
        app = Server(["status_api.main:create_app", "--factory"], env)
        bare = None
        try:
            body = app.wait(path)
            (Path(tmp) / "body.json").write_bytes(body)
            bare = Server(["bench.bare_asgi:app"], {**env, "BARE_BODY_FILE": str(Path(tmp) / "body.json")})
            assert bare.wait("/") == body
            targets = {"bare ASGI": bare.url + path, "status API": app.url + path}
            for url in targets.values():  # warm both up
                wrk(url, 10, 1)
            best: dict[tuple[str, int], dict[str, float]] = {}
            for clients in args.clients:
                for _ in range(args.repeat):
                    for name, url in targets.items():
                        result = wrk(url, clients, args.seconds)
                        key = (name, clients)
                        if key not in best or result["rps"] > best[key]["rps"]:
                            best[key] = result
        finally:
            app.stop()
            if bare is not None:
                bare.stop()

    print(f"\nGET {path}, {len(body)} bytes, uvicorn 1 worker each, wrk -t2, best of {args.repeat} x {args.seconds} s")
    print(f"{'clients':>7} {'target':<11} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'ratio':>6}")
    rows = []
    for clients in args.clients:
        base = best[("bare ASGI", clients)]
        for name in ("bare ASGI", "status API"):
            r = best[(name, clients)]
            ratio = r["rps"] / base["rps"]
            print(f"{clients:>7} {name:<11} {r['rps']:>8.0f} {r['p50_ms']:>7.1f} {r['p99_ms']:>7.1f} {ratio:>6.2f}")
            rows.append({"clients": clients, "target": name, **r, "ratio": round(ratio, 3)})
    top = max(args.clients)
    api = best[("status API", top)]
    ratio = min(best[("status API", c)]["rps"] / best[("bare ASGI", c)]["rps"] for c in args.clients)
    print(f"goals: ratio >= 0.5 ({'met' if ratio >= 0.5 else 'NOT met'}: {ratio:.2f}), "
          f"p99 < 50 ms at {top} clients ({'met' if api['p99_ms'] < 50 else 'NOT met'}: {api['p99_ms']:.1f} ms)")
    if any(r["non_2xx"] or r["socket_errors"] for r in rows):
        print("warning: some requests failed (see bench/results/api_load.json)")
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "api_load.json").write_text(json.dumps({"path": path, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
