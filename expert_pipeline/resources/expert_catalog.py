"""The pipeline's view of experts and their files in the application database."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import dagster as dg
from pydantic import PrivateAttr
from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session

from expert_pipeline.core.db import engine_for
from expert_pipeline.core.models import Expert, ExpertFile, FileStatus


class ExpertCatalog(dg.ConfigurableResource):
    database_url: str

    _engine: Engine | None = PrivateAttr(default=None)

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = engine_for(self.database_url)
        return self._engine

    def expert(self, expert_id: str) -> Expert | None:
        with Session(self.engine, expire_on_commit=False) as session:
            return session.get(Expert, expert_id)

    def files(self, expert_id: str, statuses: Sequence[FileStatus] | None = None) -> list[ExpertFile]:
        query = select(ExpertFile).where(ExpertFile.expert_id == expert_id)
        if statuses is not None:
            query = query.where(ExpertFile.status.in_([s.value for s in statuses]))
        with Session(self.engine, expire_on_commit=False) as session:
            return list(session.scalars(query.order_by(ExpertFile.created_at, ExpertFile.id)))

    def retry_failed_files(self, expert_id: str) -> None:
        """A new run retries the files that failed; indexed files stay indexed (not paid twice)."""
        with Session(self.engine) as session:
            session.execute(
                update(ExpertFile)
                .where(ExpertFile.expert_id == expert_id, ExpertFile.status == FileStatus.FAILED)
                .values(status=FileStatus.PENDING, error_kind=None, error_message=None)
            )
            session.commit()

    def set_file(self, file_id: str, **values: Any) -> None:
        with Session(self.engine) as session:
            session.execute(update(ExpertFile).where(ExpertFile.id == file_id).values(**values))
            session.commit()

    def fail_file(self, file_id: str, kind: str, message: str) -> None:
        self.set_file(file_id, status=FileStatus.FAILED, error_kind=kind, error_message=message)
