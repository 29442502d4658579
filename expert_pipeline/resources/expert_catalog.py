"""The pipeline's view of experts and their files in the application database."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any, TypeVar

import dagster as dg
from pydantic import PrivateAttr
from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session

from expert_pipeline.core import maintenance
from expert_pipeline.core.db import engine_for
from expert_pipeline.core.db_retry import call_with_db_retry
from expert_pipeline.core.models import (
    Expert,
    ExpertFile,
    ExpertProcessingProgress,
    FileStatus,
    Stage,
    Status,
)
from expert_pipeline.core.pipeline_health import record_beat
from expert_pipeline.core.progress_service import ExpertProcessingProgressService
from expert_pipeline.core.stats import recent_stage_seconds

T = TypeVar("T")


class ExpertCatalog(dg.ConfigurableResource):
    """Reads and file-status writes, each riding out a brief database outage (db_retry)."""

    database_url: str

    _engine: Engine | None = PrivateAttr(default=None)

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = engine_for(self.database_url)
        return self._engine

    def _run(self, what: str, fn: Callable[[Session], T]) -> T:
        def attempt() -> T:
            with Session(self.engine, expire_on_commit=False) as session:
                return fn(session)

        return call_with_db_retry(attempt, what=what)

    def expert(self, expert_id: str) -> Expert | None:
        return self._run("expert lookup", lambda session: session.get(Expert, expert_id))

    def files(self, expert_id: str, statuses: Sequence[FileStatus] | None = None) -> list[ExpertFile]:
        query = select(ExpertFile).where(ExpertFile.expert_id == expert_id)
        if statuses is not None:
            query = query.where(ExpertFile.status.in_([s.value for s in statuses]))
        query = query.order_by(ExpertFile.created_at, ExpertFile.id)
        return self._run("file list", lambda session: list(session.scalars(query)))

    def retry_failed_files(self, expert_id: str) -> None:
        """A new run retries the files that failed; indexed files stay indexed (not paid twice)."""
        statement = (
            update(ExpertFile)
            .where(ExpertFile.expert_id == expert_id, ExpertFile.status == FileStatus.FAILED)
            .values(status=FileStatus.PENDING, error_kind=None, error_message=None)
        )
        self._run("file retry", lambda session: _execute(session, statement))

    def set_file(self, file_id: str, **values: Any) -> None:
        statement = update(ExpertFile).where(ExpertFile.id == file_id).values(**values)
        self._run("file update", lambda session: _execute(session, statement))

    def recent_stage_seconds(self, stage: Stage) -> float | None:
        """Median seconds recent completed experts spent in `stage` (None without history)."""
        return self._run("stage history", lambda session: recent_stage_seconds(session, stage))

    def fail_file(self, file_id: str, kind: str, message: str) -> None:
        self.set_file(file_id, status=FileStatus.FAILED, error_kind=kind, error_message=message)

    # -- for the background jobs (automation/) ------------------------------------------------

    def pending_requests(self, limit: int = 100) -> list[ExpertProcessingProgress]:
        return self._run("pending experts", lambda session: maintenance.pending_requests(session, limit))

    def silent_runs(self, silent_since: datetime) -> list[ExpertProcessingProgress]:
        return self._run("silent runs", lambda session: maintenance.silent_runs(session, silent_since))

    def progress(self, expert_id: str) -> ExpertProcessingProgress | None:
        return self._run(
            "progress lookup",
            lambda session: ExpertProcessingProgressService(session).get_progress(expert_id),
        )

    def finish_if(
        self,
        expert_id: str,
        status: Status,
        message: str,
        owns: Callable[[ExpertProcessingProgress], bool],
        detail: str | None = None,
    ) -> bool:
        """The final state, only if `owns(record)` holds under the row lock (see the service)."""
        return self._run(
            "final state",
            lambda session: ExpertProcessingProgressService(session).finish_if(
                expert_id, status, message, owns, detail
            ),
        )

    def note(self, expert_id: str, message: str, data: dict[str, Any]) -> None:
        self._run(
            "history note",
            lambda session: ExpertProcessingProgressService(session).record_event(expert_id, message, data),
        )

    def record_pipeline_beat(self, details: dict[str, Any]) -> None:
        self._run("pipeline heartbeat", lambda session: record_beat(session, details))

    def expired_progress(self, completed_before: datetime, failed_before: datetime) -> list[str]:
        return self._run(
            "expired progress",
            lambda session: maintenance.expired_progress(session, completed_before, failed_before),
        )

    def delete_progress(self, expert_ids: Sequence[str]) -> int:
        return self._run(
            "progress deletion",
            lambda session: ExpertProcessingProgressService(session).delete_many(expert_ids),
        )

    def existing_experts(self, expert_ids: Iterable[str]) -> set[str]:
        ids = list(expert_ids)
        return self._run("expert lookup", lambda session: maintenance.existing_experts(session, ids))

    def prune_outbox_and_cache(self, deliveries_before: datetime, cache_before: datetime) -> dict[str, int]:
        return self._run(
            "outbox and cache pruning",
            lambda session: maintenance.prune_outbox_and_cache(session, deliveries_before, cache_before),
        )


def _execute(session: Session, statement: Any) -> None:
    session.execute(statement)
    session.commit()
