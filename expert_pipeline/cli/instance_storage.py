"""Dagster's instance storage, created and migrated once, before the webserver and daemon start.

Left to themselves, the webserver and the daemon both create a new home's SQLite storage at the
same moment; the loser can stamp a second alembic version, after which the daemon's code
location never loads ("more than one head present") and no run ever starts. `make up` calls
`prepare_instance` first, so they open storage that already exists, and a home already left in
that state is repaired.
"""

from __future__ import annotations

import sqlite3
import tempfile
from collections.abc import Callable
from pathlib import Path

_SHARED_DATABASES = frozenset({"runs.db", "index.db", "schedules.db"})


class InstanceStorageError(RuntimeError):
    """The instance storage cannot be prepared; the message says what to do."""


def prepare_instance(dagster_home: Path, say: Callable[[str], None] = print) -> None:
    """Repair, create and migrate the instance storage under `dagster_home` (its dagster.yaml
    must be in place, with any `env:` values it names set in this process's environment)."""
    from dagster import DagsterInstance

    for database, kept, dropped in repair_alembic_versions(dagster_home):
        say(
            f"repaired {database}: it had {len(dropped) + 1} alembic versions (from concurrent first starts); "
            f"kept {kept}, dropped {', '.join(dropped)}"
        )
    try:
        with DagsterInstance.from_config(str(dagster_home)) as instance:
            instance.upgrade(print_fn=lambda _message: None)
            # Opening each storage creates its tables now, in this one process.
            instance.get_runs(limit=1)
            instance.all_instigator_state()
            instance.get_dynamic_partitions("experts")
    except Exception as exc:
        raise InstanceStorageError(
            f"Dagster's instance storage in {dagster_home} cannot be opened or migrated: "
            f"{type(exc).__name__}: {exc}\nIf it is the embedded SQLite storage, move {dagster_home} "
            "aside (run history is lost; experts, files and vectors are not) and start again; if it "
            "is PostgreSQL (DAGSTER_PG_URL), check the server and run `dagster instance migrate`."
        ) from exc


def repair_alembic_versions(dagster_home: Path) -> list[tuple[Path, str, list[str]]]:
    """Keep the current head of several alembic versions in each SQLite storage database; returns
    what was repaired as (database, kept, dropped). The tables were created whole, at the head,
    by the process that stamped it; the other stamp is the race's leftover."""
    # The shared databases both processes create; per-run event logs have one writer each.
    databases = sorted(p for p in dagster_home.rglob("*.db") if p.name in _SHARED_DATABASES)
    if not databases:
        return []
    head: str | None = None
    repaired: list[tuple[Path, str, list[str]]] = []
    for database in databases:
        with sqlite3.connect(database, timeout=30) as connection:
            try:
                versions = [row[0] for row in connection.execute("SELECT version_num FROM alembic_version")]
            except sqlite3.OperationalError:
                continue  # no alembic table: nothing to repair
            if len(versions) < 2:
                continue
            head = head or _current_head()
            if head not in versions:
                raise InstanceStorageError(
                    f"{database} has alembic versions {versions}, none of them this Dagster's ({head}); "
                    f"move {dagster_home} aside and start again"
                )
            dropped = [v for v in versions if v != head]
            connection.execute("DELETE FROM alembic_version WHERE version_num != ?", (head,))
        repaired.append((database, head, dropped))
    return repaired


def _current_head() -> str:
    """The alembic version Dagster stamps on storage it creates today: read off a scratch
    instance, which needs no look inside Dagster's private modules."""
    from dagster import DagsterInstance

    with tempfile.TemporaryDirectory() as scratch:
        with DagsterInstance.from_config(scratch) as instance:
            instance.get_runs(limit=1)
        with sqlite3.connect(Path(scratch) / "history" / "runs.db") as connection:
            (head,) = connection.execute("SELECT version_num FROM alembic_version").fetchone()
    return str(head)
