"""`expert-pipeline ingest`: ingest files in this process, with a progress bar in the terminal.

The bar is drawn from the same progress row the dashboard reads, so what you see here is
what everyone else sees.
"""

from __future__ import annotations

import shutil
import sys
import threading
import time
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

import dagster as dg
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from expert_pipeline.core import experts_service
from expert_pipeline.core.db import engine_for, migrate
from expert_pipeline.core.db_retry import DEFAULT_PATIENCE_SECONDS
from expert_pipeline.core.experts_service import Upload, UploadLimits, UploadRejected
from expert_pipeline.core.models import ExpertProcessingProgress
from expert_pipeline.core.progress_public import stage_label
from expert_pipeline.core.progress_service import ExpertProcessingProgressService
from expert_pipeline.core.settings import get_settings
from expert_pipeline.text.extraction import SUPPORTED_EXTENSIONS


def render_bar(record: ExpertProcessingProgress, width: int = 30) -> str:
    filled = int(width * record.progress_percentage / 100)
    parts = [
        f"[{'#' * filled}{'.' * (width - filled)}] {record.progress_percentage:5.1f}%",
        stage_label(record.stage),
    ]
    if record.total_files:
        parts.append(f"file {min(record.current_file_index + 1, record.total_files)}/{record.total_files}")
    if record.stage == "embedding" and record.total_batches:
        parts.append(f"batch {record.current_batch}/{record.total_batches}")
    if record.current_file:
        parts.append(record.current_file)
    return "  ".join(parts)


def ingest_files(name: str, paths: Sequence[str], agent_id: str | None = None, verbose: bool = False) -> int:
    from expert_pipeline.adapters.factory import build_file_storage
    from expert_pipeline.definitions import build_definitions
    from expert_pipeline.partitions import EXPERTS

    settings = get_settings()
    settings.ensure_dirs()
    migrate(settings.resolved_database_url)
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        print(f"error: not a file: {', '.join(missing)}", file=sys.stderr)
        return 2
    engine = engine_for(settings.resolved_database_url)
    limits = UploadLimits(
        max_files=settings.max_upload_files,
        max_file_bytes=settings.max_upload_file_bytes,
        max_total_bytes=settings.max_upload_total_bytes,
        allowed_extensions=SUPPORTED_EXTENSIONS,
    )
    with ExitStack() as stack, Session(engine, expire_on_commit=False) as session:
        uploads = [Upload(Path(p).name, stack.enter_context(open(p, "rb"))) for p in paths]
        try:
            expert, _ = experts_service.create_expert(
                session,
                build_file_storage(settings),
                name=name,
                uploads=uploads,
                limits=limits,
                agent_id=agent_id,
                queued=False,
            )
        except UploadRejected as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    print(f"expert {expert.id} ({name}): {len(paths)} file(s)")

    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(EXPERTS, [expert.id])
    job = build_definitions(settings).resolve_job_def("ingest_expert")
    outcome: dict[str, bool] = {}
    worker = threading.Thread(
        target=lambda: outcome.setdefault(
            "ok",
            job.execute_in_process(
                partition_key=expert.id,
                instance=instance,
                raise_on_error=False,
                # Dagster's event log would tear the bar apart line by line; --verbose shows it.
                run_config={
                    "loggers": {"console": {"config": {"log_level": "DEBUG" if verbose else "CRITICAL"}}}
                },
            ).success,
        ),
        daemon=True,
    )
    worker.start()
    interactive = sys.stdout.isatty() and not verbose
    last_line = ""
    unreachable_since: float | None = None
    while True:
        alive = worker.is_alive()
        try:
            with Session(engine) as session:
                record = ExpertProcessingProgressService(session).get_progress(expert.id)
        except OperationalError:
            # The database is restarting; the run rides it out (db_retry), and so does the bar.
            unreachable_since = unreachable_since or time.monotonic()
            if time.monotonic() - unreachable_since > DEFAULT_PATIENCE_SECONDS:
                print("\nerror: the database has been unreachable for too long", file=sys.stderr)
                return 1
            time.sleep(0.5)
            continue
        unreachable_since = None
        if record is not None:
            line = render_bar(record)
            if line != last_line:
                columns = shutil.get_terminal_size((100, 20)).columns
                print(
                    ("\r" + line[: columns - 1].ljust(columns - 1)) if interactive else line,
                    end="" if interactive else "\n",
                    flush=True,
                )
                last_line = line
        if not alive:
            break
        time.sleep(0.2)
    if interactive:
        print()
    if record is not None and record.status == "completed":
        print(f"done: {record.processed_files} file(s) indexed, {record.failed_files} failed")
        return 0
    print(f"failed: {record.error_message if record else 'no progress record'}", file=sys.stderr)
    return 1
