"""`make up` as users run it: fresh homes, the README's settings verbatim, stopping it mid-ingest.

These start the real launcher (`expert-pipeline up`: status API, Dagster webserver and daemon)
in a process group of its own and talk to it over HTTP, as a user's browser or script would.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from expert_pipeline.adapters.encoder_choice import planned_backend
from expert_pipeline.core.settings import Settings, normalize_database_url
from expert_pipeline.cli.instance_storage import prepare_instance
from expert_pipeline.cli.up import REPO_ROOT, instance_config
from tests.conftest import POSTGRES_ADMIN_URL, free_port, skip_or_fail
from tests.fixture_documents import make_pdf, sample_paragraphs
from tests.openai_standin import API_KEY as OPENAI_KEY
from tests.openai_standin import OpenAIStandin
from tests.waiting import wait_for

BIN = Path(sys.executable).parent


@pytest.mark.parametrize(
    "pasted",
    [
        "postgres://user:pw@db.example:5432/app",
        "postgresql://user:pw@db.example:5432/app",
        "postgresql+psycopg2://user:pw@db.example:5432/app",
        "postgresql+psycopg://user:pw@db.example:5432/app",
        " postgresql://user:pw@db.example:5432/app\n",
    ],
)
def test_every_documented_url_form_means_one_driver(pasted: str) -> None:
    expected = "postgresql+psycopg2://user:pw@db.example:5432/app"
    assert normalize_database_url(pasted) == expected
    settings = Settings(database_url=pasted, dagster_pg_url=pasted)
    assert settings.resolved_database_url == settings.resolved_dagster_pg_url == expected


def test_a_home_left_with_two_alembic_versions_is_repaired(tmp_path: Path) -> None:
    """What concurrent first starts left behind: the daemon then refused to load for good."""
    import dagster as dg

    home = tmp_path / "dagster"
    home.mkdir()
    (home / "dagster.yaml").write_text(instance_config(use_postgres=False))
    prepare_instance(home, say=lambda _line: None)
    schedules = home / "schedules" / "schedules.db"
    with sqlite3.connect(schedules) as connection:
        (head,) = connection.execute("SELECT version_num FROM alembic_version").fetchone()
        connection.execute("INSERT INTO alembic_version VALUES ('5771160a95ad')")
    said: list[str] = []
    prepare_instance(home, say=said.append)
    assert len(said) == 1 and "kept " + head in said[0] and "5771160a95ad" in said[0], said
    with sqlite3.connect(schedules) as connection:
        assert connection.execute("SELECT version_num FROM alembic_version").fetchall() == [(head,)]
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert instance.all_instigator_state() == []


class Product:
    """`expert-pipeline up` in a process group of its own, as `make up` runs it."""

    def __init__(self, home: Path, env: dict[str, str], log: Path) -> None:
        self.home = home
        self.api_port = free_port()
        self.webserver_port = free_port()
        self.env = {
            **os.environ,
            **env,
            "EXPERT_PIPELINE_HOME": str(home),
            "STATUS_API_PORT": str(self.api_port),
            "DAGSTER_WEBSERVER_PORT": str(self.webserver_port),
            "PYTHONUNBUFFERED": "1",
        }
        self.env.pop("DAGSTER_HOME", None)
        self.log_path = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.api = httpx.Client(base_url=f"http://127.0.0.1:{self.api_port}", timeout=30)

    def start(self) -> Product:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [str(BIN / "expert-pipeline"), "up"],
            cwd=REPO_ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_for("the status API to answer", self._answers, timeout=120, interval=0.3)
        return self

    def _answers(self) -> bool:
        assert self.proc is not None and self.proc.poll() is None, self.log()
        try:
            return self.api.get("/healthz").status_code in (200, 503)
        except httpx.TransportError:
            return False

    def stop_group(self) -> int:
        """SIGTERM to the whole group, twice, as a service manager and make pass it on."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGTERM)
        os.killpg(self.proc.pid, signal.SIGTERM)
        return self.proc.wait(timeout=60)

    def leftovers(self) -> list[str]:
        found = []
        for proc in psutil.process_iter(["pid", "cmdline"]):
            try:
                if proc.environ().get("EXPERT_PIPELINE_HOME") == str(self.home):
                    found.append(f"{proc.pid}: {' '.join(proc.info['cmdline'] or [])[:200]}")
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        return found

    def upload(self, pdf: Path) -> str:
        with pdf.open("rb") as handle:
            response = self.api.post(
                "/api/experts",
                data={"name": "Smoke"},
                files=[("files", (pdf.name, handle, "application/pdf"))],
            )
        assert response.status_code == 201, response.text
        return str(response.json()["expert"]["id"])

    def progress(self, expert_id: str) -> dict[str, object]:
        response = self.api.get(f"/api/experts/{expert_id}/progress")
        assert response.status_code == 200, response.text
        return response.json()["progress"]  # type: ignore[no-any-return]

    def events(self, expert_id: str) -> list[str]:
        return [
            e["message"] for e in self.api.get(f"/api/experts/{expert_id}/progress/events").json()["events"]
        ]

    def wait_final(self, expert_id: str, timeout: float = 300) -> dict[str, object]:
        wait_for(
            "the expert to finish",
            lambda: self.progress(expert_id)["status"] in ("completed", "failed", "cancelled"),
            timeout=timeout,
            interval=0.5,
        )
        return self.progress(expert_id)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def wait_pipeline_ready(self) -> None:
        """Until the daemon takes work and the Dagster UI (through which the API submits runs) answers."""

        def ready() -> bool:
            try:
                health = self.api.get("/healthz").json()
                web = httpx.get(f"http://127.0.0.1:{self.webserver_port}/server_info", timeout=5)
            except httpx.TransportError:
                return False
            return bool(health.get("pipeline", {}).get("status") == "ok" and web.status_code == 200)

        wait_for("the daemon and the Dagster UI to be up", ready, timeout=180, interval=0.5)

    def runs_of(self, expert_id: str) -> list[dict[str, str]]:
        """The expert's Dagster runs (their tags), from the Dagster UI's GraphQL API."""
        query = (
            "query($t:[ExecutionTag!]){runsOrError(filter:{tags:$t}){... on Runs{results{tags{key value}}}}}"
        )
        answer = httpx.post(
            f"http://127.0.0.1:{self.webserver_port}/graphql",
            json={"query": query, "variables": {"t": [{"key": "expert_id", "value": expert_id}]}},
            timeout=30,
        ).json()
        return [
            {t["key"]: t["value"] for t in run["tags"]} for run in answer["data"]["runsOrError"]["results"]
        ]

    def processes_of(self, cmdline_part: str) -> list[psutil.Process]:
        """This home's live processes whose command line has `cmdline_part`."""
        found = []
        for proc in psutil.process_iter(["pid", "cmdline"]):
            try:
                if proc.environ().get("EXPERT_PIPELINE_HOME") == str(self.home) and cmdline_part in " ".join(
                    proc.info["cmdline"] or []
                ):
                    found.append(proc)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        return found

    def libraries_of(self, cmdline_part: str) -> list[set[str]]:
        """The shared libraries each of those processes has loaded (by file name)."""
        return [{Path(m.path).name for m in proc.memory_maps()} for proc in self.processes_of(cmdline_part)]

    def environ_of(self, cmdline_part: str) -> dict[str, str]:
        """The environment of the first of those processes."""
        found = self.processes_of(cmdline_part)
        assert found, f"no process of this home runs {cmdline_part!r}"
        return dict(found[0].environ())

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        for proc in psutil.process_iter():
            try:
                if proc.environ().get("EXPERT_PIPELINE_HOME") == str(self.home):
                    proc.kill()
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue


@pytest.fixture
def product_factory(tmp_path: Path) -> Iterator[list[Product]]:
    started: list[Product] = []
    yield started
    for product in started:
        product.kill()


def _pdf(path: Path, pages: int) -> Path:
    return make_pdf(path, ["\n\n".join(sample_paragraphs(6, seed=p)) for p in range(pages)])


@pytest.mark.slow
def test_stopping_mid_ingest_stops_everything_and_resumes_on_the_next_start(
    tmp_path: Path, product_factory: list[Product]
) -> None:
    home = tmp_path / "home"
    # Nothing embedded while reading: the stop must land in a long embedding stage.
    env = {"EMBEDDING_BATCH_SIZE": "4", "PROGRESS_MIN_WRITE_INTERVAL_SECONDS": "0.1", "EMBED_WHILE_READING": "false"}
    product = Product(home, env, tmp_path / "up.log")
    product_factory.append(product)
    product.start()
    product.wait_pipeline_ready()
    expert_id = product.upload(_pdf(tmp_path / "manual.pdf", pages=40))
    wait_for(
        "embedding to be under way",
        lambda: (
            product.progress(expert_id)["stage"] == "embedding"
            and product.progress(expert_id)["current_chunk"] > 0
        ),  # type: ignore[operator]
        timeout=180,
        interval=0.2,
    )
    # One model per machine: the run worker (forked from the daemon's forkserver, whose command
    # line it keeps) embeds through the embedding server; where OpenVINO runs the model, torch is
    # in no process at all (the conversion ran once, in a child). The launcher, alive as long as
    # the product, holds neither Dagster (gRPC) nor the adapters (Arrow): a child prepared storage.
    workers = product.libraries_of("multiprocessing.forkserver")
    assert workers and not any(any(lib.startswith("libtorch") for lib in libs) for libs in workers), workers
    (server,) = product.libraries_of("embedding_server")
    if planned_backend().startswith("openvino"):
        assert any(lib.startswith("libopenvino") for lib in server), server
        assert not any(lib.startswith("libtorch") for lib in server), server
    else:
        assert any(lib.startswith("libtorch") for lib in server), server
    (launcher,) = product.libraries_of("expert-pipeline up")
    assert not any(lib.startswith(("libarrow", "cygrpc", "libtorch")) for lib in launcher), launcher
    # Two malloc arenas for the Python servers and the runs, glibc's default for the model server.
    assert product.environ_of("status_api.main").get("MALLOC_ARENA_MAX") == "2"
    assert product.environ_of("multiprocessing.forkserver").get("MALLOC_ARENA_MAX") == "2"
    assert "MALLOC_ARENA_MAX" not in product.environ_of("embedding_server")
    assert [run.get("expert_pipeline/launched_by") for run in product.runs_of(expert_id)] == ["status API"]
    assert product.stop_group() == 0, product.log()
    assert product.leftovers() == [], product.log()

    interrupted = Product(home, env, tmp_path / "up.log")
    product_factory.append(interrupted)
    interrupted.start()
    record = interrupted.progress(expert_id)
    assert record["status"] in ("pending", "in_progress", "completed"), record
    assert any(m.startswith("Interrupted: the pipeline stopped") for m in interrupted.events(expert_id))
    final = interrupted.wait_final(expert_id)
    assert (final["status"], final["error_message"]) == ("completed", None), (final, interrupted.log())
    assert not any("Cancelled" in m for m in interrupted.events(expert_id))
    assert interrupted.stop_group() == 0
    assert interrupted.leftovers() == []


@pytest.fixture
def bare_postgres_urls() -> Iterator[dict[str, str]]:
    """Two new databases, named the way the README's table shows: plain postgresql:// URLs."""
    admin = create_engine(
        POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3}
    )
    names = [f"ep_progress_{uuid.uuid4().hex[:8]}", f"ep_dagster_{uuid.uuid4().hex[:8]}"]
    try:
        with admin.connect() as conn:
            for name in names:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # noqa: BLE001 - no server to test against
        admin.dispose()
        skip_or_fail(f"PostgreSQL not reachable at {POSTGRES_ADMIN_URL}: {exc.__class__.__name__}")
    base = make_url(POSTGRES_ADMIN_URL)
    urls = [f"postgresql://{base.username}@{base.host}:{base.port or 5432}/{name}" for name in names]
    yield {"DATABASE_URL": urls[0], "DAGSTER_PG_URL": urls[1]}
    with admin.connect() as conn:
        for name in names:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.mark.slow
def test_the_readme_production_settings_verbatim_ingest(
    tmp_path: Path,
    product_factory: list[Product],
    bare_postgres_urls: dict[str, str],
    moto_endpoint: str,
    s3_bucket: str,
    openai_standin: OpenAIStandin,
) -> None:
    env = {
        **bare_postgres_urls,
        "FILE_STORAGE": "s3",
        "S3_BUCKET": s3_bucket,
        "AWS_ENDPOINT_URL": moto_endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
        "EMBEDDING_PROVIDER": "openai",
        "OPENAI_API_KEY": OPENAI_KEY,
        "OPENAI_BASE_URL": openai_standin.url,
    }
    product = Product(tmp_path / "home", env, tmp_path / "up.log")
    product_factory.append(product)
    product.start()
    expert_id = product.upload(_pdf(tmp_path / "report.pdf", pages=3))
    final = product.wait_final(expert_id, timeout=180)
    assert (final["status"], final["progress_percentage"]) == ("completed", 100.0), (final, product.log())
    assert openai_standin.embedding_requests, "the OpenAI stand-in was never asked"
    health = product.api.get("/healthz").json()
    assert health["pipeline"]["status"] == "ok", health
    # The console tells what a person cares about; the servers' chatter is in the log files.
    wait_for("the console to tell the expert is ready", lambda: "ready to chat" in product.log(), timeout=30)
    console = product.log()
    assert "skipped" not in console and " DEBUG " not in console and "alembic" not in console, console
    assert (product.home / "logs" / "dagster-daemon.log").stat().st_size > 0
    assert product.stop_group() == 0
    assert product.leftovers() == []


@pytest.mark.slow
def test_terminal_ingest_keeps_its_bar_whole(tmp_path: Path) -> None:
    env = {**os.environ, "EXPERT_PIPELINE_HOME": str(tmp_path / "home")}
    env.pop("DATABASE_URL", None)
    done = subprocess.run(
        [
            str(BIN / "expert-pipeline"),
            "ingest",
            "--name",
            "Notes",
            str(_pdf(tmp_path / "notes.pdf", pages=2)),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("expert ") and lines[-1] == "done: 1 file(s) indexed, 0 failed", lines
    assert all(line.startswith("[") for line in lines[1:-1]), lines  # nothing but the bar between
    assert "100.0%  Complete" in lines[-2]
    assert done.stderr == "", done.stderr  # no event log, no migration steps
