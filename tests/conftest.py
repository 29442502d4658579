"""Shared fixtures: every database test runs on SQLite and on a real PostgreSQL.

PostgreSQL comes from TEST_POSTGRES_URL (default: the local server with trust auth). Without
a reachable server the PostgreSQL cases skip with the reason, unless
EXPERT_PIPELINE_REQUIRE_SERVICES=1 (as in CI), where they fail instead.

The stand-ins' fixtures (OpenAI, Pinecone, S3 through moto) are registered once, below, with
`pytest_plugins`: a test asks for `openai_standin`, `pinecone_store`, `s3_bucket`... by name.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import httpx
import pytest
from sqlalchemy import Engine, create_engine, delete, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from expert_pipeline.core.db import engine_for, migrate
from expert_pipeline.core.models import Base
from expert_pipeline.core.settings import Settings, normalize_database_url
from tests.threaded_server import ThreadedServer

pytest_plugins = ("tests.openai_standin", "tests.pinecone_standin", "tests.s3_server")

REQUIRE_SERVICES = os.environ.get("EXPERT_PIPELINE_REQUIRE_SERVICES") == "1"
POSTGRES_ADMIN_URL = os.environ.get(
    "TEST_POSTGRES_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
)
# The team's shared folder (spec, corpus) sits next to the checkout; CI may say where it is.
SHARED_DIR = Path(os.environ.get("EXPERT_PIPELINE_SHARED_DIR") or Path(__file__).resolve().parents[2] / "shared")


def skip_or_fail(reason: str) -> None:
    if REQUIRE_SERVICES:
        pytest.fail(f"{reason} (required because EXPERT_PIPELINE_REQUIRE_SERVICES=1)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, dropped afterwards."""
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})
    name = f"expert_pipeline_test_{uuid.uuid4().hex[:10]}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # noqa: BLE001 - any failure here means "no server to test against"
        admin.dispose()
        skip_or_fail(f"PostgreSQL not reachable at {POSTGRES_ADMIN_URL}: {exc.__class__.__name__}")
    url = make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    yield url
    engine_for(url).dispose()
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


_migrated: set[str] = set()


def _clean(engine: Engine) -> None:
    with Session(engine) as session:
        for table in reversed(Base.metadata.sorted_tables):
            session.execute(delete(table))
        session.commit()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'progress.db'}"
    else:
        url = request.getfixturevalue("postgres_database")
    if url not in _migrated:
        migrate(url)
        _migrated.add(url)
    _clean(engine_for(url))
    return url


@pytest.fixture
def instance(database_url: str) -> Iterator[dg.DagsterInstance]:
    """The Dagster instance for in-process runs and sensor ticks, on the leg's database.

    On the PostgreSQL leg runs, events, partitions and ticks live in PostgreSQL through
    dagster-postgres (psycopg2 URL), as in production; the session's database outlives a test,
    so its Dagster storage is emptied first. On SQLite: a temporary SQLite instance.
    """
    if not database_url.startswith("postgresql"):
        with dg.instance_for_test() as instance:
            yield instance
        return
    overrides = {"storage": {"postgres": {"postgres_url": normalize_database_url(database_url)}}}
    with dg.instance_for_test(overrides=overrides) as instance:
        instance.wipe()  # runs and event logs (dynamic partitions included)
        instance.schedule_storage.wipe()  # type: ignore[union-attr] - sensor ticks and cursors
        yield instance


@pytest.fixture
def engine(database_url: str) -> Engine:
    return engine_for(database_url)


@pytest.fixture
def db(engine: Engine) -> Iterator[Session]:
    with Session(engine, expire_on_commit=False) as session:
        yield session


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return Settings(expert_pipeline_home=tmp_path / "home", database_url=database_url)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LiveServer(ThreadedServer):
    """The status API on a real socket, in a background thread."""

    def __init__(self, app: object) -> None:
        super().__init__(app, name="status API")


@pytest.fixture
def live_api(settings: Settings) -> Iterator[LiveServer]:
    from status_api.main import create_app

    app = create_app(settings)
    with LiveServer(app) as server:
        server.app = app  # type: ignore[attr-defined]
        yield server


@pytest.fixture
def http(live_api: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live_api.url, timeout=30) as client:
        yield client


@pytest.fixture
def daemon_env() -> dict[str, str]:
    """Extra environment for the daemon and its runs; a test module may override this fixture."""
    return {}


@pytest.fixture
def daemon(tmp_path: Path, daemon_env: dict[str, str]) -> Iterator[Settings]:
    """The real Dagster daemon on embedded defaults (SQLite), as `make up` runs it."""
    import signal
    import subprocess
    import sys

    from expert_pipeline.cli.up import REPO_ROOT, instance_config

    home = tmp_path / "home"
    settings = Settings(expert_pipeline_home=home)
    settings.ensure_dirs()
    settings.dagster_home.mkdir(parents=True)
    (settings.dagster_home / "dagster.yaml").write_text(instance_config(use_postgres=False))
    env = {**os.environ, "EXPERT_PIPELINE_HOME": str(home), "DAGSTER_HOME": str(settings.dagster_home)}
    env.pop("DATABASE_URL", None)
    env.update(daemon_env)
    settings = Settings(**{k.lower(): v for k, v in daemon_env.items()}, expert_pipeline_home=home)
    log = open(tmp_path / "daemon.log", "wb")
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "dagster-daemon"), "run", "-w", str(REPO_ROOT / "workspace.yaml")],
        cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        yield settings
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
