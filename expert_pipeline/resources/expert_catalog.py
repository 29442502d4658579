"""The pipeline's view of experts and their files in the application database."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import dagster as dg
from pydantic import PrivateAttr
from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session

from expert_pipeline.core.db import engine_for
from expert_pipeline.core.db_retry import call_with_db_retry
from expert_pipeline.core.models import Expert, ExpertFile, FileStatus, Stage
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


def _execute(session: Session, statement: Any) -> None:
    session.execute(statement)
    session.commit()
