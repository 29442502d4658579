"""What `up` prepares before any server starts: the progress database migrated and, unless only
the API runs, Dagster's instance storage created or repaired. The launcher runs this in a child
process (`python -m expert_pipeline.cli.prepare [DAGSTER_HOME]`) so that it, alive as long as
the product, never holds Alembic and Dagster (~40 MB) for work done once."""

from __future__ import annotations

import contextlib
import io
import sys
from pathlib import Path

from expert_pipeline.cli.instance_storage import InstanceStorageError, prepare_instance
from expert_pipeline.core.db import migrate
from expert_pipeline.core.settings import get_settings


def prepare(dagster_home: Path | None) -> int:
    migrate(get_settings().resolved_database_url)
    if dagster_home is None:
        return 0
    try:
        # Dagster prints its own storage upgrade steps; only our repair notes reach the console.
        with contextlib.redirect_stdout(io.StringIO()):
            prepare_instance(dagster_home, say=lambda line: print(line, file=sys.__stdout__, flush=True))
    except InstanceStorageError as exc:
        print(exc, file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(prepare(Path(sys.argv[1]) if len(sys.argv) > 1 else None))
