"""SSE push latency with many subscribers, and database reads per tick.

Starts the status API (uvicorn in a thread of this process, so the server's SQL can be counted
in-process), opens N subscribers on `GET /api/experts/progress/stream` from separate client
processes (asyncio + raw sockets: an HTTP client library would be the bottleneck, not the
server), writes progress updates through the progress service at a steady rate from another
thread, and measures, for every delivered event, receive time minus write time (the write time
travels in the update's `details.bench_sent_at`; it is taken just before the service call, so
the commit is included). Runs on SQLite and, if reachable, PostgreSQL.

    .venv/bin/python bench/sse_latency.py [--subscribers 1000] [--rate 10] [--seconds 12]

Prints a table and writes bench/results/sse_latency.json. Goal: p95 <= 300 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import platform
import resource
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.threaded_server import ThreadedServer  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "sse_latency.json"
POSTGRES_ADMIN_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")
GOAL_P95_MS = 300.0
STREAM_PATH = "/api/experts/progress/stream"


# -- client processes (kept free of heavy imports: they are spawned) --------------------------


async def _subscriber(host: str, port: int, latencies: list[float], counts: dict[str, int],
                      connected: asyncio.Event, total: int, stop: asyncio.Event) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(
            f"GET {STREAM_PATH} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: text/event-stream\r\n\r\n".encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        if b" 200 " not in head.split(b"\r\n", 1)[0]:
            counts["errors"] += 1
            return
        chunked = b"transfer-encoding: chunked" in head.lower()
        counts["connected"] += 1
        if counts["connected"] == total:
            connected.set()
        buffer = b""
        while not stop.is_set():
            if chunked:
                size = int((await reader.readline()).strip() or b"0", 16)
                if size == 0:
                    break
                data = (await reader.readexactly(size + 2))[:-2]
            else:
                data = await reader.read(65536)
                if not data:
                    break
            received = time.time()
            buffer += data
            while b"\n\n" in buffer:
                frame, buffer = buffer.split(b"\n\n", 1)
                for line in frame.split(b"\n"):
                    if line.startswith(b"data: "):
                        details = json.loads(line[6:]).get("details") or {}
                        sent = details.get("bench_sent_at")
                        if sent is not None:
                            latencies.append(received - sent)
                        counts["events"] += 1
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


def client_process(host: str, port: int, subscribers: int, ready: Any, stop: Any, results: Any) -> None:
    async def main() -> None:
        latencies: list[float] = []
        counts = {"connected": 0, "events": 0, "errors": 0}
        connected, stopping = asyncio.Event(), asyncio.Event()
        tasks = []
        for _ in range(subscribers):
            tasks.append(asyncio.create_task(_subscriber(host, port, latencies, counts, connected, subscribers, stopping)))
            await asyncio.sleep(0.001)  # do not flood the listen backlog
        try:
            async with asyncio.timeout(60):
                await connected.wait()
        except TimeoutError:
            pass
        ready.set()
        while not stop.is_set():
            await asyncio.sleep(0.05)
        stopping.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        results.put({"latencies": latencies, **counts})

    try:
        import uvloop  # noqa: PLC0415

        uvloop.run(main())
    except ImportError:
        asyncio.run(main())


# -- server side -------------------------------------------------------------------------------


class Server(ThreadedServer):
    def __init__(self, app: Any) -> None:
        super().__init__(app, name="status API", backlog=4096)


def percentile(values: list[float], pct: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * (len(ordered) - 1))))
    return ordered[index]


def run_case(database: str, url: str, args: argparse.Namespace) -> dict[str, Any]:
    from sqlalchemy import delete, event
    from sqlalchemy.orm import Session

    from expert_pipeline.core.db import engine_for, migrate
    from expert_pipeline.core.models import Base
    from expert_pipeline.core.progress_service import ExpertProcessingProgressService
    from expert_pipeline.core.settings import Settings
    from status_api.main import create_app

    home = Path(tempfile.mkdtemp(prefix="sse-bench-"))
    settings = Settings(expert_pipeline_home=home, database_url=url)
    migrate(settings.resolved_database_url)
    engine = engine_for(settings.resolved_database_url)
    with Session(engine) as session:
        for table in reversed(Base.metadata.sorted_tables):
            session.execute(delete(table))
        session.commit()
    experts = [f"bench-{i:03d}" for i in range(args.experts)]
    with Session(engine, expire_on_commit=False) as session:
        service = ExpertProcessingProgressService(session)
        for expert_id in experts:
            service.create_progress_record(expert_id=expert_id, total_files=1)

    selects = {"tick": 0, "other": 0}

    def count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "expert_processing_progress" in statement:
            selects["tick" if "updated_at >" in statement else "other"] += 1

    app = create_app(settings)
    ctx = mp.get_context("spawn")
    with Server(app) as server:
        broadcaster = app.state.progress_broadcaster
        stop = ctx.Event()
        results = ctx.Queue()
        per_process = [args.subscribers // args.client_processes] * args.client_processes
        per_process[0] += args.subscribers - sum(per_process)
        readies, procs = [], []
        for count_here in per_process:
            ready = ctx.Event()
            proc = ctx.Process(target=client_process, args=("127.0.0.1", server.port, count_here, ready, stop, results))
            proc.start()
            readies.append(ready)
            procs.append(proc)
        deadline = time.monotonic() + 90
        while broadcaster.subscriber_count < args.subscribers and time.monotonic() < deadline:
            time.sleep(0.1)
        for ready in readies:
            ready.wait(timeout=max(1.0, deadline - time.monotonic()))
        subscribed = broadcaster.subscriber_count
        time.sleep(1.0)  # let the snapshots go out before measuring

        event.listen(engine, "before_cursor_execute", count)
        ticks0, reads0, drops0 = broadcaster.stats.ticks, broadcaster.stats.reads, broadcaster.stats.frames_dropped
        writes = 0
        write_seconds: list[float] = []
        interval = 1.0 / args.rate
        started = time.monotonic()
        with Session(engine, expire_on_commit=False) as session:
            service = ExpertProcessingProgressService(session)
            next_at = started
            while time.monotonic() - started < args.seconds:
                expert_id = experts[writes % len(experts)]
                t0 = time.perf_counter()
                service.update_progress(
                    expert_id=expert_id, stage="embedding", current_batch=writes, total_batches=10**6,
                    progress_percentage=min(98.0, writes / 100), details={"bench_sent_at": time.time(), "seq": writes},
                )
                write_seconds.append(time.perf_counter() - t0)
                writes += 1
                next_at += interval
                time.sleep(max(0.0, next_at - time.monotonic()))
        elapsed = time.monotonic() - started
        time.sleep(1.5)  # trailing deliveries
        ticks = broadcaster.stats.ticks - ticks0
        reads = broadcaster.stats.reads - reads0
        dropped = broadcaster.stats.frames_dropped - drops0
        event.remove(engine, "before_cursor_execute", count)
        stats = broadcaster.stats.snapshot()

        stop.set()
        collected = [results.get(timeout=60) for _ in procs]
        for proc in procs:
            proc.join(timeout=20)
    engine.dispose()

    latencies = [lat for c in collected for lat in c["latencies"]]
    expected = writes * args.subscribers
    ms = [x * 1000 for x in latencies]
    return {
        "database": database,
        "subscribers": args.subscribers,
        "subscribed": subscribed,
        "client_errors": sum(c["errors"] for c in collected),
        "writes": writes,
        "write_rate_per_s": round(writes / elapsed, 2),
        "write_ms_p50": round(statistics.median(write_seconds) * 1000, 2) if write_seconds else None,
        "deliveries": len(latencies),
        "deliveries_expected": expected,
        "delivered_fraction": round(len(latencies) / expected, 4) if expected else None,
        "latency_ms": {
            "p50": round(percentile(ms, 50), 1), "p95": round(percentile(ms, 95), 1),
            "p99": round(percentile(ms, 99), 1), "max": round(max(ms), 1) if ms else None,
        },
        "ticks": ticks,
        "broadcaster_reads": reads,
        "sql_tick_selects": selects["tick"],
        "sql_other_progress_selects": selects["other"],
        "reads_per_tick": round(selects["tick"] / ticks, 3) if ticks else None,
        "frames_dropped": dropped,
        "notifications": stats["notifications"],
        "listening": stats["listening"],
        "tick_seconds": broadcaster.tick_seconds,
        "goal_p95_ms": GOAL_P95_MS,
        "meets_goal": bool(ms) and percentile(ms, 95) <= GOAL_P95_MS,
    }


def postgres_database() -> tuple[str | None, Any]:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})
    name = f"expert_pipeline_bench_{uuid.uuid4().hex[:8]}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # noqa: BLE001
        print(f"PostgreSQL not reachable at {POSTGRES_ADMIN_URL}: {exc.__class__.__name__}; skipping it")
        admin.dispose()
        return None, None

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False), drop


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=10.0, help="progress writes per second")
    parser.add_argument("--seconds", type=float, default=12.0, help="length of the write phase per database")
    parser.add_argument("--experts", type=int, default=20)
    parser.add_argument("--client-processes", type=int, default=2)
    parser.add_argument("--databases", default="sqlite,postgresql")
    args = parser.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, args.subscribers * 2 + 512)), hard))
    sys.path.insert(0, str(REPO))

    cases = []
    began = time.monotonic()
    for database in [d.strip() for d in args.databases.split(",") if d.strip()]:
        if database == "sqlite":
            url = f"sqlite:///{Path(tempfile.mkdtemp(prefix='sse-bench-db-')) / 'progress.db'}"
            cases.append(run_case("sqlite", url, args))
        elif database == "postgresql":
            url, drop = postgres_database()
            if url is None:
                continue
            try:
                cases.append(run_case("postgresql", url, args))
            finally:
                drop()

    header = f"{'database':<11}{'subs':>6}{'writes':>8}{'delivered':>11}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}" \
             f"{'max ms':>9}{'ticks':>7}{'reads/tick':>11}{'dropped':>9}"
    print()
    print(header)
    print("-" * len(header))
    for c in cases:
        lat = c["latency_ms"]
        print(f"{c['database']:<11}{c['subscribed']:>6}{c['writes']:>8}{c['delivered_fraction'] * 100:>10.1f}%"
              f"{lat['p50']:>9}{lat['p95']:>9}{lat['p99']:>9}{lat['max']:>9}{c['ticks']:>7}"
              f"{c['reads_per_tick']:>11}{c['frames_dropped']:>9}")
    print(f"\ngoal: p95 <= {GOAL_P95_MS:.0f} ms; "
          + ", ".join(f"{c['database']}: {'met' if c['meets_goal'] else 'MISSED'}" for c in cases))
    print(f"total time {time.monotonic() - began:.1f} s")

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "benchmark": "sse_latency",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "parameters": vars(args),
        "results": cases,
    }, indent=2) + "\n")
    print(f"wrote {RESULTS.relative_to(REPO)}")
    return 0 if cases and all(c["meets_goal"] for c in cases) else 1


if __name__ == "__main__":
    sys.exit(main())
