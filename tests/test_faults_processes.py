"""Fault injection with real processes: the run worker is killed with SIGKILL in the middle of
embedding, and the database is stopped and started again during an ingest.

Each case must end in a truthful final state, with nothing duplicated and nothing lost, and
the expert's history must say what happened.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from sqlalchemy import create_engine, func, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from expert_pipeline.core.db import migrate
from expert_pipeline.core.models import EmbeddingCacheEntry, ExpertProcessingProgress, ProgressEvent
from expert_pipeline.core.settings import Settings
from expert_pipeline.adapters.factory import build_vector_store
from status_api.main import create_app
from tests.conftest import LiveServer, skip_or_fail
from tests.fixture_documents import make_pdf, sample_paragraphs
from tests.waiting import wait_for
from tests.pipeline_helpers import create_expert
from tests.postgres_cluster import PostgresCluster, find_pg_bin

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

BIN = Path(sys.executable).parent


def _long_pdf(path: Path, pages: int) -> Path:
    return make_pdf(path, ["\n\n".join(sample_paragraphs(6, seed=p)) for p in range(pages)])


class Row:
    """Reads the progress row and history from outside the pipeline, tolerating a database that
    is down (a fresh connection per read, no pool to go stale)."""

    def __init__(self, url: str) -> None:
        self.engine = create_engine(url, poolclass=NullPool)

    def progress(self) -> ExpertProcessingProgress | None:
        try:
            with Session(self.engine, expire_on_commit=False) as session:
                return session.scalars(select(ExpertProcessingProgress)).first()
        except OperationalError:
            return None

    def events(self, expert_id: str) -> list[ProgressEvent]:
        with Session(self.engine) as session:
            query = select(ProgressEvent).where(ProgressEvent.expert_id == expert_id).order_by(ProgressEvent.id)
            return list(session.scalars(query))

    def cached_embeddings(self) -> int:
        with Session(self.engine) as session:
            return int(session.scalar(select(func.count()).select_from(EmbeddingCacheEntry)) or 0)

    def embedding_mid_way(self) -> bool:
        record = self.progress()
        return bool(
            record is not None and record.stage == "embedding" and record.status == "in_progress"
            and 0 < record.current_chunk < record.total_chunks * 0.7
        )


# --- the database restarts during an ingest -------------------------------------------------


@pytest.fixture(scope="module")
def private_postgres() -> Iterator[PostgresCluster]:
    pg_bin = find_pg_bin()
    if pg_bin is None:
        skip_or_fail("PostgreSQL server binaries (initdb, pg_ctl) not found")
    cluster = PostgresCluster(pg_bin)  # type: ignore[arg-type]
    try:
        cluster.init().start()
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        cluster.destroy()
        skip_or_fail(f"could not start a private PostgreSQL cluster: {exc}")
    yield cluster
    cluster.destroy()


@pytest.mark.postgres
def test_database_restart_during_ingest_is_ridden_out(private_postgres: PostgresCluster, tmp_path: Path) -> None:
    home = tmp_path / "home"
    migrate(private_postgres.url)
    pdf = _long_pdf(tmp_path / "handbook.pdf", pages=50)
    env = {
        **os.environ, "EXPERT_PIPELINE_HOME": str(home), "DATABASE_URL": private_postgres.url,
        "EMBEDDING_BATCH_SIZE": "4", "PROGRESS_MIN_WRITE_INTERVAL_SECONDS": "0.1",
    }
    env.pop("DAGSTER_HOME", None)
    output = open(tmp_path / "ingest.log", "w+")
    ingest = subprocess.Popen(
        [str(BIN / "expert-pipeline"), "ingest", "--name", "Handbook", str(pdf)],
        env=env, stdout=output, stderr=subprocess.STDOUT,
    )
    row = Row(private_postgres.url)
    settings = Settings(expert_pipeline_home=home, database_url=private_postgres.url)
    try:
        with LiveServer(create_app(settings)) as api, httpx.Client(base_url=api.url, timeout=10) as http:
            wait_for("embedding to be under way", row.embedding_mid_way, timeout=120)
            expert_id = row.progress().expert_id  # type: ignore[union-attr]
            private_postgres.stop()
            # While the database is down the status API says so plainly, and stays up.
            down = http.get(f"/api/experts/{expert_id}/progress")
            assert down.status_code == 503 and "unavailable" in down.json()["error"], down.text
            time.sleep(3)
            private_postgres.start()
            assert http.get(f"/api/experts/{expert_id}/progress").status_code == 200
        code = ingest.wait(timeout=180)
    finally:
        if ingest.poll() is None:
            ingest.kill()
        output.seek(0)
        log = output.read()
        output.close()
    assert code == 0, log

    record = row.progress()
    assert record is not None
    assert (record.status, record.stage, record.progress_percentage) == ("completed", "complete", 100.0)
    assert record.current_chunk == record.total_chunks > 0
    messages = [e.message for e in row.events(record.expert_id)]
    outages = [m for m in messages if m.startswith("The database was unreachable for")]
    assert outages, messages
    assert messages[-1].lower().startswith("processing complete"), messages
    # Nothing lost or doubled: one vector and one cached embedding per chunk.
    assert build_vector_store(settings).count(record.expert_id) == record.total_chunks
    assert row.cached_embeddings() == record.total_chunks


# --- the run worker is killed in the middle of embedding ------------------------------------


@pytest.fixture
def daemon_env() -> dict[str, str]:
    # Small batches so the kill lands mid-embedding. The heartbeat sensor is only the fallback
    # here (the code server sees its run process die), so it keeps a realistic allowance: a new
    # worker importing torch can hold the GIL, and with it the heartbeat, for seconds.
    # Nothing embedded while reading either: the kill must land in a long embedding stage.
    return {
        "DEAD_RUN_AFTER_SECONDS": "30", "EMBEDDING_BATCH_SIZE": "4", "PROGRESS_MIN_WRITE_INTERVAL_SECONDS": "0.1",
        "EMBED_WHILE_READING": "false",
    }


def _run_worker(home: Path) -> psutil.Process | None:
    """The process running this test's Dagster run: a fork of the daemon's forkserver
    (ForkedRunLauncher), whose command line it keeps."""
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if "multiprocessing.forkserver" not in cmdline:
            continue
        try:
            parent = proc.parent()
            if (
                parent is not None
                and "multiprocessing.forkserver" in " ".join(parent.cmdline())
                and proc.environ().get("EXPERT_PIPELINE_HOME") == str(home)
            ):
                return proc
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return None


def test_run_worker_killed_mid_embedding_is_retried_and_completes(daemon: Settings, tmp_path: Path) -> None:
    settings = daemon
    migrate(settings.resolved_database_url)
    expert_id = create_expert(settings, [_long_pdf(tmp_path / "manual.pdf", pages=50)], name="Manual")
    row = Row(settings.resolved_database_url)
    wait_for("embedding to be under way", row.embedding_mid_way, timeout=120)
    worker = _run_worker(settings.expert_pipeline_home)
    assert worker is not None, "no run worker process found"
    killed_at_chunk = row.progress().current_chunk  # type: ignore[union-attr]
    os.kill(worker.pid, signal.SIGKILL)

    def finished() -> bool:
        record = row.progress()
        return record is not None and record.status == "completed"

    wait_for("the retried run to complete", finished, timeout=180, interval=0.5)
    record = row.progress()
    assert record is not None and record.progress_percentage == 100.0
    assert record.current_chunk == record.total_chunks > killed_at_chunk

    messages = [e.message for e in row.events(expert_id)]
    # Why it restarted is told before or with the restart, whichever daemon acts first.
    died = next((i for i, m in enumerate(messages) if "the run worker was terminated by signal 9" in m), None)
    assert died is not None, messages
    restarted = next(i for i, m in enumerate(messages) if m.startswith("Processing restarted automatically after a failed run"))
    assert died <= restarted, messages
    assert messages[-1].lower().startswith("processing complete"), messages
    # The retry embedded only what the killed worker had not: every chunk is cached exactly
    # once, and the vectors are one per chunk (ids are deterministic, so no duplicates).
    assert row.cached_embeddings() == record.total_chunks
    assert build_vector_store(settings).count(expert_id) == record.total_chunks
