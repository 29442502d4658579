"""Engine, sessions and migrations for the progress database."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import CursorResult
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql.base import Executable

if TYPE_CHECKING:
    # alembic (with mako) takes ~0.5 s to import; only `migrate` needs it, never a run process.
    from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # As many connections as the API's worker threads (anyio's default is 40), so a burst
        # of requests never queues for a connection; SQLite connections cost next to nothing.
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30}, pool_size=20, max_overflow=20
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            # WAL lets the API read while a pipeline writes; busy_timeout makes writers for
            # different experts queue briefly instead of failing with "database is locked".
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


def rows_affected(session: Session, statement: Executable) -> int:
    """Execute an UPDATE/DELETE and say how many rows it touched (a DML statement's result is a
    CursorResult, which the generic Result type does not show)."""
    result = session.execute(statement)
    return int(cast("CursorResult[Any]", result).rowcount or 0)


@lru_cache(maxsize=8)
def engine_for(url: str) -> Engine:
    return make_engine(url)


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    with session_factory(engine)() as session:
        yield session


def alembic_config(url: str) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


# alembic's `context` is one module-level proxy per process: two migrations at once in threads
# (an app starting while a test or another app migrates) would tear each other's config down.
_MIGRATE_LOCK = threading.Lock()


def migrate(url: str) -> None:
    """Bring the schema to the newest revision; safe to call on every start."""
    from alembic import command

    engine = engine_for(url)
    with _MIGRATE_LOCK, engine.begin() as connection:
        config = alembic_config(url)
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
