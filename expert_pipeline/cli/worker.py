"""`expert-pipeline worker`: a Celery worker that runs the ingest job's steps on this host.

Any host with the same environment as the scheduler host (DATABASE_URL and DAGSTER_PG_URL on
PostgreSQL, FILE_STORAGE=s3, the embedding provider and the vector store, EXECUTOR=celery and
CELERY_BROKER_URL) can run one; EXPERT_PIPELINE_HOME is this host's own scratch space.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

from expert_pipeline.core.settings import Settings, get_settings

if TYPE_CHECKING:
    from celery import Celery

# expert_pipeline.jobs' INGEST_QUEUE and EMBED_QUEUE; that module is imported only once the
# settings are known to be complete (it builds the job, which refuses a half-configured broker).
DEFAULT_QUEUES = "ingest,embed"


def celery_app(settings: Settings) -> Celery:
    """The Celery app dagster-celery's executor submits to, with its step task registered."""
    from dagster_celery.executor import CeleryExecutor
    from dagster_celery.make_app import make_app
    from dagster_celery.tasks import create_task

    from expert_pipeline.jobs import celery_app_config

    config = celery_app_config(settings)
    executor = CeleryExecutor.for_cli(
        broker=config["broker"],
        backend=config["backend"],
        config_source=config["config_source"],
    )
    app = make_app(executor.app_args())
    create_task(app)
    return app


def _allow_step_children(**_: object) -> None:
    """A step runs in a pool process that Celery's billiard marks daemonic (multiprocessing then
    refuses it children) and gives billiard's authkey (which multiprocessing cannot pass on);
    text extraction needs a child (its time and memory bounds), so both are made plain again."""
    import multiprocessing.process

    current = multiprocessing.current_process()
    current._config["daemon"] = False  # type: ignore[attr-defined]
    current._config["authkey"] = multiprocessing.process.AuthenticationString(bytes(current.authkey))  # type: ignore[attr-defined]


def worker_argv(
    queues: str, concurrency: int, name: str, loglevel: str, max_memory_mb: int | None
) -> list[str]:
    argv = [
        "worker",
        "--queues",
        queues,
        "--concurrency",
        str(concurrency),
        "--hostname",
        f"{name}@%h",
        "--prefetch-multiplier",
        "1",
        "--loglevel",
        loglevel,
        # No chatter between workers: each only talks to the broker.
        "--without-gossip",
        "--without-mingle",
    ]
    if max_memory_mb:
        # A child process past this much memory is replaced after its current step.
        argv += ["--max-memory-per-child", str(max_memory_mb * 1024)]
    return argv


def run_worker(
    queues: str = DEFAULT_QUEUES,
    concurrency: int = 1,
    name: str = "worker",
    loglevel: str = "INFO",
    max_memory_mb: int | None = None,
) -> int:
    settings = get_settings()
    if settings.executor != "celery":
        print("expert-pipeline worker needs EXECUTOR=celery (and CELERY_BROKER_URL)", file=sys.stderr)
        return 2
    if not settings.celery_broker_url:
        print(
            "expert-pipeline worker needs CELERY_BROKER_URL (e.g. redis://broker-host:6379/0)",
            file=sys.stderr,
        )
        return 2
    if not settings.resolved_dagster_pg_url:
        print(
            "expert-pipeline worker needs DAGSTER_PG_URL: steps on other hosts write to the shared "
            "Dagster instance",
            file=sys.stderr,
        )
        return 2
    try:
        app = celery_app(settings)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    settings.ensure_dirs()
    # The scheduler's instance reads its storage URL from DAGSTER_PG_URL; a step here does too.
    os.environ["DAGSTER_PG_URL"] = settings.resolved_dagster_pg_url
    os.environ.setdefault("DAGSTER_HOME", str(settings.dagster_home))
    settings.dagster_home.mkdir(parents=True, exist_ok=True)
    # Imported once here, so each step's process (forked from this one) starts without it.
    from celery.signals import worker_process_init

    import expert_pipeline.definitions  # noqa: F401

    worker_process_init.connect(_allow_step_children, weak=False)
    app.worker_main(worker_argv(queues, concurrency, name, loglevel, max_memory_mb))
    return 0
