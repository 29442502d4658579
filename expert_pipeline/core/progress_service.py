"""Create, update and read expert progress: the operations of the specification.

Callable exactly as the specification's "Code Examples" show::

    service = ExpertProcessingProgressService(db)
    service.create_progress_record(expert_id="expert-123", agent_id="agent-456", total_files=5)
    service.update_progress(expert_id="expert-123", stage="embedding", current_batch=10,
                            total_batches=50, progress_percentage=20.0)
    service.mark_completed(expert_id="expert-123", metadata={"total_time": 120.5})
    service.mark_failed(expert_id="expert-123", error_message="OpenAI API error")

Guarantees kept here, in one place, whoever writes: stages and statuses only take the
specification's values; the percentage stays within 0-100, never decreases within a run and
reaches 100 only on completion; a finished run is never reopened by a late write; every
stage change, status change, file result and final state is recorded as an event.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from expert_pipeline.core.db import rows_affected
from expert_pipeline.core.models import (
    ACTIVE_STATUSES,
    TERMINAL_STATUSES,
    ExpertProcessingProgress,
    ProgressEvent,
    Stage,
    Status,
    utcnow,
)
from expert_pipeline.core.notifications.outbox import enqueue_finished
from expert_pipeline.core.progress_public import stage_label

# The key of an event's data that holds raw detail (exception text, storage keys): shown to
# operators (and in the Dagster UI), left out of what other users get.
OPERATOR_DETAIL = "detail"

# Only completion may show 100 %: a bar at 100 while work remains would be a lie.
MAX_RUNNING_PERCENTAGE = 99.0

_COUNTERS = (
    "current_file_index",
    "total_files",
    "current_batch",
    "total_batches",
    "current_chunk",
    "total_chunks",
    "processed_files",
    "failed_files",
)


class ProgressNotFound(LookupError):
    def __init__(self, expert_id: str) -> None:
        super().__init__(f"No progress record for expert '{expert_id}'")
        self.expert_id = expert_id


class InvalidProgressUpdate(ValueError):
    pass


class RunNotWanted(RuntimeError):
    """A run started for an expert whose request was cancelled or already finished."""


class RunSuperseded(RunNotWanted):
    """A write from a run that no longer owns the expert's row (it was re-queued, or another
    run took it over): the run must stop, and its write is dropped."""


def owned_by(record: ExpertProcessingProgress, run_id: str | None) -> bool:
    """Whether `run_id` may write the row: the run that claimed it, while it is running.
    None is a writer outside any run (the API, an operator, the terminal command)."""
    return run_id is None or (record.run_id == run_id and record.status == Status.IN_PROGRESS)


def _stage(value: str | Stage) -> Stage:
    try:
        return Stage(value)
    except ValueError:
        allowed = ", ".join(s.value for s in Stage)
        raise InvalidProgressUpdate(f"unknown stage '{value}' (allowed: {allowed})") from None


def _status(value: str | Status) -> Status:
    try:
        return Status(value)
    except ValueError:
        allowed = ", ".join(s.value for s in Status)
        raise InvalidProgressUpdate(f"unknown status '{value}' (allowed: {allowed})") from None


def _non_negative(name: str, value: int) -> int:
    if value < 0:
        raise InvalidProgressUpdate(f"{name} must be >= 0, got {value}")
    return int(value)


class ExpertProcessingProgressService:
    def __init__(self, db: Session) -> None:
        self.db = db

    # -- reads -------------------------------------------------------------------------------

    def get_progress(self, expert_id: str) -> ExpertProcessingProgress | None:
        return self.db.scalar(
            select(ExpertProcessingProgress).where(ExpertProcessingProgress.expert_id == expert_id)
        )

    def get_active_progress(self, expert_ids: Any = None) -> list[ExpertProcessingProgress]:
        """Active records, oldest first; `expert_ids` (ids or a subquery of ids) narrows them."""
        query = select(ExpertProcessingProgress).where(
            ExpertProcessingProgress.status.in_([s.value for s in ACTIVE_STATUSES])
        )
        if expert_ids is not None:
            query = query.where(ExpertProcessingProgress.expert_id.in_(expert_ids))
        return list(
            self.db.scalars(
                query.order_by(ExpertProcessingProgress.started_at, ExpertProcessingProgress.expert_id)
            )
        )

    def list_events(
        self, expert_id: str, *, after_id: int | None = None, limit: int | None = None
    ) -> list[ProgressEvent]:
        query = select(ProgressEvent).where(ProgressEvent.expert_id == expert_id)
        if after_id is not None:
            query = query.where(ProgressEvent.id > after_id)
        query = query.order_by(ProgressEvent.id)
        if limit is not None:
            query = query.limit(limit)
        return list(self.db.scalars(query))

    # -- writes ------------------------------------------------------------------------------

    def create_progress_record(
        self, expert_id: str, agent_id: str | None = None, total_files: int = 0, *, queued: bool = True
    ) -> ExpertProcessingProgress:
        """Create the expert's row as `pending`, or reset an existing one for a new run.

        `queued=False` creates it already `in_progress`, for a caller that runs the ingest
        itself (the terminal command), so the pipeline's sensor does not start a second run.
        """
        now = utcnow()
        record = self._locked(expert_id)
        if record is None:
            record = ExpertProcessingProgress(expert_id=expert_id, details={})
            self.db.add(record)
        self._reset(record, now)
        record.run_id = None  # a new request: no run owns it until one claims it (start_run)
        record.agent_id = agent_id if agent_id is not None else record.agent_id
        record.total_files = _non_negative("total_files", total_files)
        record.status = Status.PENDING if queued else Status.IN_PROGRESS
        message = "Queued for processing" if queued else "Processing started"
        self._event(record, message, {"total_files": record.total_files}, now)
        self.db.commit()
        return record

    def start_run(
        self,
        expert_id: str,
        run_id: str | None = None,
        total_files: int | None = None,
        retry_of: str | None = None,
        why: str | None = None,
    ) -> ExpertProcessingProgress:
        """Move the row to `in_progress` for a run, which then owns it; a new run starts from zero.

        A run may claim a request no run owns yet (`pending`, or `in_progress` for the terminal
        command), or, as Dagster's automatic retry (`retry_of` naming the run it retries),
        resume the row that run owned and left `failed` or still `in_progress` (its worker
        died). Anything else (a cancelled or finished request, a request re-queued since, a row
        another run owns) raises RunNotWanted: this run has nothing to do.
        """
        now = utcnow()
        record = self._require(expert_id)
        if record.status == Status.IN_PROGRESS and run_id is not None and record.run_id == run_id:
            self.db.commit()
            return record
        if retry_of is not None:
            resumable = record.run_id == retry_of and record.status in (Status.FAILED, Status.IN_PROGRESS)
        else:
            resumable = record.run_id is None and record.status in ACTIVE_STATUSES
        if not resumable:
            status, owner = record.status, record.run_id
            self.db.rollback()
            if status in ACTIVE_STATUSES:
                raise RunSuperseded(
                    f"expert '{expert_id}' is {status} for another request (run {owner or 'not started yet'}); "
                    "this run has nothing to do"
                )
            raise RunNotWanted(f"expert '{expert_id}' is {status}; this run has nothing to do")
        self._reset(record, now)
        record.status = Status.IN_PROGRESS
        record.run_id = run_id
        record.heartbeat_at = now
        if total_files is not None:
            record.total_files = _non_negative("total_files", total_files)
        message = "Processing started"
        if retry_of:
            message = "Processing restarted automatically after a failed run" + (f": {why}" if why else "")
        self._event(
            record, message, {"run_id": run_id, "retry_of": retry_of} if retry_of else {"run_id": run_id}, now
        )
        self.db.commit()
        return record

    def heartbeat(self, expert_id: str, run_id: str | None = None) -> str | None:
        """Record that the run is alive; returns the row's status (None if it was deleted).
        A run that no longer owns the row raises RunSuperseded, so it stops."""
        record = self._locked(expert_id)
        if record is None:
            self.db.rollback()
            return None
        self._check_owner(record, run_id)
        if record.status == Status.IN_PROGRESS:
            record.heartbeat_at = utcnow()
        status = record.status
        self.db.commit()
        return status

    def update_progress(
        self,
        expert_id: str,
        stage: str | None = None,
        status: str | None = None,
        current_file: str | None = None,
        current_file_index: int | None = None,
        total_files: int | None = None,
        current_batch: int | None = None,
        total_batches: int | None = None,
        current_chunk: int | None = None,
        total_chunks: int | None = None,
        processed_files: int | None = None,
        failed_files: int | None = None,
        progress_percentage: float | None = None,
        details: Mapping[str, Any] | None = None,
        error_message: str | None = None,
        event_message: str | None = None,
        event_data: Mapping[str, Any] | None = None,
        eta_seconds: float | None = None,
        chunks_per_second: float | None = None,
        run_id: str | None = None,
    ) -> ExpertProcessingProgress:
        new_stage = _stage(stage) if stage is not None else None
        new_status = _status(status) if status is not None else None
        if new_status is Status.COMPLETED:
            return self.mark_completed(expert_id, run_id=run_id)
        if new_status is Status.FAILED:
            return self.mark_failed(expert_id, error_message or "Processing failed", run_id=run_id)
        if new_status is Status.CANCELLED:
            return self.mark_cancelled(expert_id, error_message or "Cancelled", run_id=run_id)
        if new_stage in (Stage.COMPLETE, Stage.FAILED):
            raise InvalidProgressUpdate(
                f"stage '{new_stage}' is set by mark_completed/mark_failed, not update_progress"
            )

        now = utcnow()
        record = self._require(expert_id)
        if record.status in TERMINAL_STATUSES:
            # A late write from a run that already ended must not reopen or alter it.
            self.db.rollback()
            return record
        self._check_owner(record, run_id)

        changes: list[str] = []
        if new_status is not None and new_status != record.status:
            record.status = new_status
            changes.append(f"status {new_status}")
        elif record.status == Status.PENDING:
            record.status = Status.IN_PROGRESS
            changes.append("status in_progress")
        if new_stage is not None and new_stage != record.stage:
            record.stage = new_stage
            changes.append(f"stage {new_stage}")

        values = {
            "current_file_index": current_file_index,
            "total_files": total_files,
            "current_batch": current_batch,
            "total_batches": total_batches,
            "current_chunk": current_chunk,
            "total_chunks": total_chunks,
            "processed_files": processed_files,
            "failed_files": failed_files,
        }
        for name, value in values.items():
            if value is not None:
                setattr(record, name, _non_negative(name, value))
        if current_file is not None:
            record.current_file = current_file
        if progress_percentage is not None:
            pct = float(progress_percentage)
            if math.isnan(pct):
                raise InvalidProgressUpdate("progress_percentage must be a number")
            pct = min(max(pct, 0.0), MAX_RUNNING_PERCENTAGE)
            record.progress_percentage = round(max(record.progress_percentage or 0.0, pct), 2)
        if details is not None:
            record.details = {**(record.details or {}), **dict(details)}
        if error_message is not None:
            record.error_message = error_message
        if eta_seconds is not None:
            record.eta_seconds = round(max(float(eta_seconds), 0.0), 1)
        if chunks_per_second is not None:
            record.chunks_per_second = round(max(float(chunks_per_second), 0.0), 2)
        record.updated_at = now
        record.heartbeat_at = now

        if changes or event_message:
            message = event_message or stage_label(record.stage)
            self._event(record, message, dict(event_data or {}), now)
        self.db.commit()
        return record

    def record_event(
        self, expert_id: str, message: str, data: Mapping[str, Any] | None = None, run_id: str | None = None
    ) -> ProgressEvent:
        """Add a history entry (e.g. one file's result) at the record's current stage/status."""
        record = self._require(expert_id)
        if record.status not in TERMINAL_STATUSES:
            self._check_owner(record, run_id)
        event = self._event(record, message, dict(data or {}), utcnow())
        self.db.commit()
        return event

    def mark_completed(
        self, expert_id: str, metadata: Mapping[str, Any] | None = None, run_id: str | None = None
    ) -> ExpertProcessingProgress:
        now = utcnow()
        record = self._require(expert_id)
        if record.status in TERMINAL_STATUSES:
            self.db.rollback()
            return record
        self._check_owner(record, run_id)
        record.status = Status.COMPLETED
        record.stage = Stage.COMPLETE
        record.progress_percentage = 100.0
        record.error_message = None
        record.eta_seconds = 0.0
        if metadata:
            record.details = {**(record.details or {}), **dict(metadata)}
        record.updated_at = now
        record.completed_at = now
        self._event(record, "Processing complete", dict(metadata or {}), now)
        enqueue_finished(self.db, record)  # in this transaction: the event is never lost
        self.db.commit()
        return record

    def mark_failed(
        self, expert_id: str, error_message: str, run_id: str | None = None, detail: str | None = None
    ) -> ExpertProcessingProgress:
        """Fail the expert; with `run_id`, only while that run owns the row (else unchanged).
        `error_message` is for users; `detail` (exception text, keys) only for operators' history."""
        return self._finish(expert_id, Status.FAILED, error_message, lambda r: owned_by(r, run_id), detail)

    def mark_cancelled(
        self, expert_id: str, reason: str = "Cancelled", run_id: str | None = None
    ) -> ExpertProcessingProgress:
        return self._finish(expert_id, Status.CANCELLED, reason, lambda r: owned_by(r, run_id))

    def finish_if(
        self,
        expert_id: str,
        status: Status,
        message: str,
        owns: Callable[[ExpertProcessingProgress], bool],
        detail: str | None = None,
    ) -> bool:
        """Give the row its final `status` only if `owns(record)` holds, decided under the row
        lock (for writers outside the run: the sensors). False when it did not, or the row is gone."""
        try:
            record = self._finish(expert_id, status, message, owns, detail)
        except ProgressNotFound:
            return False
        return record.status == status and record.error_message == message

    def requeue_interrupted(self, expert_id: str, run_id: str, message: str) -> bool:
        """The product stopped under a running ingest (not a user's cancel): queue the expert
        again, so it resumes when the product starts, with the interruption in its history."""
        now = utcnow()
        record = self._require(expert_id)
        if not owned_by(record, run_id):
            self.db.rollback()
            return False
        self._event(record, message, {"kind": "interrupted", "run_id": run_id}, now)
        self._reset(record, now)  # a new started_at: a new request, hence a new run
        record.run_id = None
        record.status = Status.PENDING
        self._event(record, "Queued for processing", {"total_files": record.total_files}, now)
        self.db.commit()
        return True

    def delete_progress(self, expert_id: str) -> bool:
        deleted = rows_affected(
            self.db, delete(ExpertProcessingProgress).where(ExpertProcessingProgress.expert_id == expert_id)
        )
        self.db.execute(delete(ProgressEvent).where(ProgressEvent.expert_id == expert_id))
        self.db.commit()
        return bool(deleted)

    def delete_many(self, expert_ids: Sequence[str]) -> int:
        if not expert_ids:
            return 0
        deleted = rows_affected(
            self.db,
            delete(ExpertProcessingProgress).where(ExpertProcessingProgress.expert_id.in_(expert_ids)),
        )
        self.db.execute(delete(ProgressEvent).where(ProgressEvent.expert_id.in_(expert_ids)))
        self.db.commit()
        return int(deleted or 0)

    # -- internals ---------------------------------------------------------------------------

    def _finish(
        self,
        expert_id: str,
        status: Status,
        message: str,
        owns: Callable[[ExpertProcessingProgress], bool] = lambda _record: True,
        detail: str | None = None,
    ) -> ExpertProcessingProgress:
        now = utcnow()
        record = self._require(expert_id)
        if record.status in TERMINAL_STATUSES or not owns(record):
            # A final state never overwrites another one, nor a newer request's pending/in_progress.
            self.db.rollback()
            return record
        record.status = status
        record.stage = Stage.FAILED if status == Status.FAILED else record.stage
        record.error_message = message
        record.eta_seconds = None
        record.updated_at = now
        record.completed_at = now
        label = "Processing failed" if status == Status.FAILED else "Processing cancelled"
        self._event(record, f"{label}: {message}", {OPERATOR_DETAIL: detail} if detail else {}, now)
        enqueue_finished(self.db, record)
        self.db.commit()
        return record

    def _check_owner(self, record: ExpertProcessingProgress, run_id: str | None) -> None:
        if not owned_by(record, run_id):
            status, owner = record.status, record.run_id
            self.db.rollback()
            raise RunSuperseded(
                f"expert '{record.expert_id}' is now {status} for "
                f"{'run ' + owner if owner else 'a new request'}; run {run_id} stops"
            )

    def _locked(self, expert_id: str) -> ExpertProcessingProgress | None:
        # Row lock on PostgreSQL so the reporter and a sensor cannot interleave on one expert;
        # other experts' rows are untouched, so their writers never wait on this one.
        if self.db.get_bind().dialect.name == "sqlite":
            # SQLite has no row locks: a no-op write first takes its write lock, so the read
            # below and the write after it are one atomic step, as FOR UPDATE makes them.
            self.db.execute(
                update(ExpertProcessingProgress)
                .where(ExpertProcessingProgress.expert_id == expert_id)
                .values(expert_id=ExpertProcessingProgress.expert_id)
                .execution_options(synchronize_session=False)
            )
        return self.db.scalar(
            select(ExpertProcessingProgress)
            .where(ExpertProcessingProgress.expert_id == expert_id)
            .with_for_update()
            .execution_options(populate_existing=True)
        )

    def _require(self, expert_id: str) -> ExpertProcessingProgress:
        record = self._locked(expert_id)
        if record is None:
            self.db.rollback()
            raise ProgressNotFound(expert_id)
        return record

    @staticmethod
    def _reset(record: ExpertProcessingProgress, now: datetime) -> None:
        for name in _COUNTERS:
            if name != "total_files":
                setattr(record, name, 0)
        record.stage = Stage.FILE_PROCESSING
        record.current_file = None
        record.progress_percentage = 0.0
        record.details = {}
        record.error_message = None
        record.started_at = now
        record.updated_at = now
        record.completed_at = None
        record.eta_seconds = None
        record.chunks_per_second = None
        record.heartbeat_at = None

    def _event(
        self, record: ExpertProcessingProgress, message: str, data: dict[str, Any], now: datetime
    ) -> ProgressEvent:
        event = ProgressEvent(
            expert_id=record.expert_id,
            created_at=now,
            stage=record.stage,
            status=record.status,
            message=message,
            data=data,
        )
        self.db.add(event)
        return event
