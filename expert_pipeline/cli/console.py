"""What `make up` shows: one line per thing a person cares about. The servers' own output goes
to log files under `$EXPERT_PIPELINE_HOME/logs/`; warnings and errors from it are echoed, and
experts starting, finishing or failing are told as they happen."""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import IO

from sqlalchemy import select
from sqlalchemy.orm import Session

from expert_pipeline.core.db import engine_for
from expert_pipeline.core.models import Expert, ExpertProcessingProgress, Status, utcnow

# Lines worth a person's attention in the servers' output (the rest is in the log files).
_NOTEWORTHY = re.compile(r"\b(WARNING|ERROR|CRITICAL|Traceback|[A-Za-z]+Error:)")

Say = Callable[[str], None]
log = logging.getLogger(__name__)


def say(line: str) -> None:
    print(line, flush=True)


def relay(name: str, stream: IO[bytes], log_path: Path, verbose: bool, out: Say = say) -> threading.Thread:
    """Copy a server's output to its log file; echo what is noteworthy (everything if verbose)."""

    def pump() -> None:
        with log_path.open("ab") as log:
            for raw in iter(stream.readline, b""):
                log.write(raw)
                log.flush()
                line = raw.decode(errors="replace").rstrip()
                if verbose or _NOTEWORTHY.search(line):
                    out(f"[{name}] {line}")

    thread = threading.Thread(target=pump, name=f"relay-{name}", daemon=True)
    thread.start()
    return thread


class ExpertWatcher:
    """Tells experts' progress as events: processing started, completed, failed, cancelled."""

    def __init__(self, database_url: str, out: Say = say, interval: float = 2.0) -> None:
        self.engine = engine_for(database_url)
        self.out = out
        self.interval = interval
        self._seen: dict[str, str] = {}
        self._since: datetime = utcnow()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="expert-watcher", daemon=True)

    def start(self) -> ExpertWatcher:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.poll()
            except Exception as exc:  # noqa: BLE001 - the database may be restarting; the next poll tells
                log.debug("expert watcher: %s", exc)

    def poll(self) -> None:
        P = ExpertProcessingProgress
        query = (
            select(P, Expert.name)
            .join(Expert, Expert.id == P.expert_id, isouter=True)
            .where(P.updated_at >= self._since)
            .order_by(P.updated_at)
        )
        with Session(self.engine) as session:
            rows = session.execute(query).all()
        for record, name in rows:
            self._since = max(self._since, record.updated_at)
            if self._seen.get(record.expert_id) == record.status:
                continue
            self._seen[record.expert_id] = record.status
            line = describe(record, name)
            if line:
                self.out(line)


def describe(record: ExpertProcessingProgress, name: str | None) -> str | None:
    who = f'expert "{name or record.expert_id}" ({record.expert_id[:8]})'
    if record.status == Status.IN_PROGRESS:
        return f"{who}: processing {record.total_files} file(s)"
    if record.status == Status.COMPLETED:
        seconds = (record.completed_at - record.started_at).total_seconds() if record.completed_at else 0.0
        return f"{who}: ready to chat ({record.processed_files} file(s), {record.total_chunks} chunks, {seconds:.1f} s)"
    if record.status == Status.FAILED:
        return f"{who}: failed: {record.error_message}"
    if record.status == Status.CANCELLED:
        return f"{who}: cancelled ({record.error_message})"
    return None
