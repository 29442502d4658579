"""Status API under load: `GET /api/experts/{id}/progress` against a bare ASGI endpoint and a
FastAPI route answering the same bytes.

    .venv/bin/python bench/api_load.py [--seconds 10] [--repeat 2] [--clients 50 200]
                                       [--database-url postgresql+psycopg2://postgres@127.0.0.1:5432/postgres]

Seeds a temporary EXPERT_PIPELINE_HOME (SQLite by default) with one expert whose progress row
is mid-ingest (embedding, batch 12 of 30), owned by the owner of an API token; a thread of this
process keeps its heartbeat fresh, as a running pipeline does (another process's write, so the
answer moves with it), and the row never turns "stalled" during the run. Then serves, each in
its own process, with the same uvicorn command and options (`--factory`, one worker, the
loop/http implementations and log level `make up` gets, access log off):

- the status API (`status_api.main:create_app`, through `bench.bare_asgi:create_status_app`,
  which only shows its INFO lines: how many GETs it answered from memory), every request
  authenticated with that token and owner-checked, answered as the API answers it: from memory
  (the broadcaster's tick, see status_api/api/hot_reads.py), the database on a miss;
- a bare ASGI callable (bench/bare_asgi.py: no framework, no database) answering the very
  bytes the status API returned for that row;
- a FastAPI app whose one route returns those bytes (bench/bare_asgi.py: routing and path
  validation, no database): what answering in a route at best costs.

Every target gets the same request, Authorization header included.

The load generator is wrk (`apt-get install wrk`): a separate process, not either server's
event loop. For each client count the targets alternate (bare, FastAPI, API, bare, ...) after
a short warm-up, and the run with the most requests/s is kept for each, because the machine is
shared and noisy. With --database-url a private database is created on that PostgreSQL server
for the run and dropped afterwards.

Prints one row per client count and target: requests/s, p50 and p99 latency (wrk's), the ratio
to bare requests/s, and whether the status API meets the goals; writes
bench/results/api_load.json. Goals: ratio >= 0.5 at every client count; p99 < 50 ms at 200
clients. Exit status 0 when both are met, 1 when not, 2 when the benchmark could not run.
About 150 s with the defaults.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import create_engine, text, update  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402

from expert_pipeline.core.auth import create_token  # noqa: E402
from expert_pipeline.core.db import engine_for, migrate  # noqa: E402
from expert_pipeline.core.models import Expert  # noqa: E402
from expert_pipeline.core.progress_service import ExpertProcessingProgressService  # noqa: E402
from expert_pipeline.core.settings import Settings  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "api_load.json"
GOAL_RATIO = 0.5
GOAL_P99_MS = 50.0
GOAL_P99_CLIENTS = 200
BARE, FASTAPI, API = "bare ASGI", "FastAPI", "status API"
TARGETS = (BARE, FASTAPI, API)
OWNER = "load-test"
# What expert_pipeline/cli/up.py runs for `make up`, less host and port: uvicorn's defaults
# otherwise (loop "auto" = uvloop, http "auto" = httptools, log level info, one worker), and
# the access log off for both servers.
UVICORN_OPTIONS = ["--factory", "--timeout-graceful-shutdown", "3", "--no-access-log"]
HEARTBEAT_SECONDS = 5.0  # the row turns "stalled" after settings.stall_after_seconds (60 s)
UNITS_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


# -- database ----------------------------------------------------------------------------------


def seed(settings: Settings, home: Path) -> tuple[str, str]:
    """One expert (three stored files) half-way through embedding, as a dashboard polls it, and
    a token of its owner."""
    from tests.pipeline_helpers import create_expert  # noqa: PLC0415 (imports Dagster)

    documents = [home / name for name in ("handbook.txt", "faq.txt", "glossary.txt")]
    for document in documents:
        document.write_text(f"{document.stem}\n" * 100)
    expert_id = create_expert(settings, documents, name="Load test")
    with Session(engine_for(settings.resolved_database_url), expire_on_commit=False) as session:
        token = create_token(session, OWNER)
        session.execute(update(Expert).where(Expert.id == expert_id).values(owner=OWNER))
        session.commit()
        service = ExpertProcessingProgressService(session)
        service.start_run(expert_id, run_id=f"bench-{uuid.uuid4().hex[:8]}", total_files=len(documents))
        service.update_progress(
            expert_id=expert_id, stage="embedding", current_file="faq.txt", current_file_index=1,
            current_batch=12, total_batches=30, current_chunk=768, total_chunks=1920, processed_files=1,
            progress_percentage=52.5, details={"batch": "12/30", "chunks": "768/1920", "filename": "faq.txt"},
            eta_seconds=41.0, chunks_per_second=46.8,
        )
    return expert_id, token


class Heartbeat(threading.Thread):
    """Keeps the row alive as the pipeline's heartbeat does (one small write every few seconds)."""

    def __init__(self, url: str, expert_id: str) -> None:
        super().__init__(name="heartbeat", daemon=True)
        self.url, self.expert_id = url, expert_id
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(HEARTBEAT_SECONDS):
            with Session(engine_for(self.url), expire_on_commit=False) as session:
                ExpertProcessingProgressService(session).heartbeat(self.expert_id)

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=30)


def private_postgres_database(server_url: str) -> tuple[str, Callable[[], None]]:
    """A new database on the server of `server_url`, and a function that drops it."""
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 5})
    name = f"expert_pipeline_api_load_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return make_url(server_url).set(database=name).render_as_string(hide_password=False), drop


# -- servers -----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """`uvicorn TARGET --factory ...` in its own process (and process group)."""

    def __init__(self, name: str, target: str, env: dict[str, str], log: Path, headers: dict[str, str]) -> None:
        self.name, self.port, self.log, self.headers = name, free_port(), log, headers
        self.command = [str(Path(sys.executable).parent / "uvicorn"), target,
                        "--host", "127.0.0.1", "--port", str(self.port), *UVICORN_OPTIONS]
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                self.command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.base = f"http://127.0.0.1:{self.port}"

    def get(self, path: str, timeout: float = 60.0) -> bytes:
        """The body of a 200 answer to GET `path`, waiting for the server to come up."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.proc.returncode}):\n{self.log_tail()}")
            try:
                request = urllib.request.Request(self.base + path, headers=self.headers)
                with urllib.request.urlopen(request, timeout=5) as response:
                    return response.read()
            except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
                if isinstance(exc, urllib.error.HTTPError) or time.monotonic() > deadline:
                    raise RuntimeError(f"{self.name}: GET {path} failed: {exc}\n{self.log_tail()}") from exc
            time.sleep(0.2)

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


# -- load generator ----------------------------------------------------------------------------


@dataclass
class Run:
    target: str
    clients: int
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    non_2xx: int
    socket_errors: int

    @property
    def ok(self) -> bool:
        return self.requests > 0 and not self.non_2xx and not self.socket_errors


def _ms(value: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value)
    if not match:
        raise ValueError(f"unexpected wrk latency {value!r}")
    return float(match.group(1)) * UNITS_MS[match.group(2)]


def wrk(target: str, url: str, clients: int, seconds: float, threads: int, headers: dict[str, str]) -> Run:
    command = ["wrk", f"-t{threads}", f"-c{clients}", f"-d{max(1, round(seconds))}s", "--latency",
               "--timeout", "10s", *(f"-H{k}: {v}" for k, v in headers.items()), url]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", out, re.MULTILINE)
    requests = re.search(r"^\s+(\d+) requests in ", out, re.MULTILINE)
    latency = dict(re.findall(r"^\s+(50|99)%\s+(\S+)\s*$", out, re.MULTILINE))
    if rps is None or requests is None or "50" not in latency or "99" not in latency:
        raise RuntimeError(f"could not read wrk's output:\n{out}")
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return Run(
        target=target, clients=clients, rps=float(rps.group(1)), p50_ms=_ms(latency["50"]),
        p99_ms=_ms(latency["99"]), requests=int(requests.group(1)),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=sum(int(n) for n in errors.groups()) if errors else 0,
    )


# -- the benchmark -----------------------------------------------------------------------------


def measure(args: argparse.Namespace, database_url: str | None, work: Path) -> dict[str, Any]:
    home = work / "home"
    settings = Settings(expert_pipeline_home=home, database_url=database_url)
    settings.ensure_dirs()
    url = settings.resolved_database_url
    migrate(url)
    expert_id, token = seed(settings, work)
    path = f"/api/experts/{expert_id}/progress"
    headers = {"Authorization": f"Bearer {token}"}

    env = {k: v for k, v in os.environ.items() if k.upper() not in ("DATABASE_URL", "EXPERT_PIPELINE_HOME")}
    env["EXPERT_PIPELINE_HOME"] = str(home)
    if database_url:
        env["DATABASE_URL"] = database_url
    heartbeat = Heartbeat(url, expert_id)
    heartbeat.start()
    servers: dict[str, Server] = {}
    runs: list[Run] = []
    try:
        servers[API] = Server(API, "bench.bare_asgi:create_status_app", env, work / "api.log", headers)
        body = servers[API].get(path)
        if json.loads(body).get("progress", {}).get("stage") != "embedding":
            raise RuntimeError(f"unexpected answer from the status API: {body[:300]!r}")
        (work / "body.json").write_bytes(body)
        bare_env = {**env, "BARE_BODY_FILE": str(work / "body.json")}
        servers[BARE] = Server(BARE, "bench.bare_asgi:create_app", bare_env, work / "bare.log", headers)
        servers[FASTAPI] = Server(
            FASTAPI, "bench.bare_asgi:create_fastapi_app", bare_env, work / "fastapi.log", headers
        )
        for name in (BARE, FASTAPI):
            if servers[name].get(path) != body:
                raise RuntimeError(f"the {name} endpoint does not answer the status API's bytes")
        urls = {name: servers[name].base + path for name in TARGETS}
        for clients in args.clients:
            if args.warmup > 0:
                for name in TARGETS:
                    wrk(name, urls[name], clients, args.warmup, args.threads, headers)
            for _ in range(args.repeat):
                for name in TARGETS:
                    run = wrk(name, urls[name], clients, args.seconds, args.threads, headers)
                    runs.append(run)
                    print(f"  {clients:>4} clients  {name:<11} {run.rps:>9.0f} req/s  "
                          f"p50 {run.p50_ms:6.1f} ms  p99 {run.p99_ms:6.1f} ms{'' if run.ok else '  ERRORS'}",
                          flush=True)
        final = servers[API].get(path)
        if len(final) != len(body):
            print(f"warning: the status API's answer changed size during the run: {len(body)} -> "
                  f"{len(final)} bytes")
    finally:
        for server in servers.values():
            server.stop()
        heartbeat.stop()
        engine_for(url).dispose()
    # How the status API answered (logged at its shutdown): from memory, or by the routes.
    served = re.search(r"polled GETs answered from memory: .*", servers[API].log.read_text(errors="replace"))
    return {"database": make_url(url).get_backend_name(), "path": path, "body_bytes": len(body), "runs": runs,
            "served": served.group(0) if served else None}


def best_runs(runs: list[Run], clients: list[int]) -> dict[tuple[str, int], Run]:
    best: dict[tuple[str, int], Run] = {}
    for run in runs:
        key = (run.target, run.clients)
        if key not in best or (run.ok, run.rps) > (best[key].ok, best[key].rps):
            best[key] = run
    return {(t, c): best[(t, c)] for c in clients for t in TARGETS}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each measured wrk run")
    parser.add_argument("--warmup", type=float, default=2.0,
                        help="wrk warm-up per target and client count (0: none)")
    parser.add_argument("--repeat", type=int, default=2,
                        help="measured runs per target and client count; the best is kept")
    parser.add_argument("--clients", type=int, nargs="+", default=[50, 200], help="wrk connections")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--database-url", default=None,
                        help="a PostgreSQL server to use instead of SQLite; a private database is created "
                             "on it and dropped afterwards")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("bench/api_load.py needs the load generator wrk, which is not installed: apt-get install wrk",
              file=sys.stderr)
        return 2

    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="api-load-") as tmp:
        work = Path(tmp)
        drop: Callable[[], None] | None = None
        database_url = None
        if args.database_url:
            if not args.database_url.startswith("postgresql"):
                parser.error("--database-url must be a PostgreSQL URL (SQLite is the default)")
            try:
                database_url, drop = private_postgres_database(args.database_url)
            except Exception as exc:  # noqa: BLE001
                print(f"could not create a database on {args.database_url}: {exc}", file=sys.stderr)
                return 2
        try:
            print(f"wrk -t{args.threads}, {args.seconds:g} s per run, best of {args.repeat}, "
                  f"{args.warmup:g} s warm-up; uvicorn {' '.join(UVICORN_OPTIONS)}", flush=True)
            case = measure(args, database_url, work)
        except (RuntimeError, subprocess.CalledProcessError) as exc:
            print(f"benchmark failed: {exc}", file=sys.stderr)
            return 2
        finally:
            if drop is not None:
                drop()

    best = best_runs(case["runs"], args.clients)
    rows = []
    print(f"\nGET {case['path']} ({case['body_bytes']} bytes, {case['database']}), "
          f"best of {args.repeat} x {args.seconds:g} s")
    header = f"{'clients':>7}  {'target':<11}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'ratio':>8}  goals"
    print(header)
    print("-" * len(header))
    for clients in args.clients:
        base = best[(BARE, clients)]
        for name in TARGETS:
            run = best[(name, clients)]
            ratio = run.rps / base.rps if base.rps else float("nan")
            row: dict[str, Any] = {**asdict(run), "ratio": round(ratio, 3)}
            goals = ""
            if name == API:
                checks = {f"ratio >= {GOAL_RATIO}": ratio >= GOAL_RATIO and run.ok}
                if clients == GOAL_P99_CLIENTS:
                    checks[f"p99 < {GOAL_P99_MS:g} ms"] = run.p99_ms < GOAL_P99_MS and run.ok
                row["goals"] = checks
                goals = ", ".join(f"{k}: {'met' if v else 'NOT met'}" for k, v in checks.items())
            if not run.ok:
                goals += f" [{run.non_2xx} non-2xx, {run.socket_errors} socket errors]"
            rows.append(row)
            print(f"{clients:>7}  {name:<11}{run.rps:>9.0f}{run.p50_ms:>9.1f}{run.p99_ms:>9.1f}"
                  f"{ratio:>8.3f}  {goals}")
    if case["served"]:
        print(f"status API: {case['served']}")
    met = all(all(r["goals"].values()) for r in rows if "goals" in r)
    if GOAL_P99_CLIENTS not in args.clients:
        print(f"(the p99 goal is for {GOAL_P99_CLIENTS} clients, which were not measured)")
    elapsed = time.monotonic() - began
    print(f"goals {'met' if met else 'NOT met'}; total time {elapsed:.0f} s")

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "benchmark": "api_load",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "parameters": {**vars(args),
                       "database_url": "postgresql (private database)" if args.database_url else None},
        "uvicorn_options": UVICORN_OPTIONS,
        "database": case["database"],
        "path": case["path"],
        "body_bytes": case["body_bytes"],
        "served": case["served"],
        "best": rows,
        "runs": [asdict(r) for r in case["runs"]],
        "goals": {"ratio_at_least": GOAL_RATIO, "p99_ms_below": GOAL_P99_MS,
                  "p99_at_clients": GOAL_P99_CLIENTS, "met": met},
        "seconds": round(elapsed, 1),
    }, indent=2) + "\n")
    print(f"wrote {RESULTS.relative_to(ROOT)}")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
