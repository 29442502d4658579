"""The pipeline's one way of writing progress: a Dagster resource over the progress service.

Batch-level updates are coalesced (at most one write per `min_write_interval_seconds`, the
newest state wins), while stage changes, file results and final states are written at once.
The time spent writing is measured so benchmarks can show that tracking costs almost nothing.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar

import dagster as dg
from pydantic import PrivateAttr
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from expert_pipeline.core.db import engine_for
from expert_pipeline.core.db_retry import call_with_db_retry
from expert_pipeline.core.models import Stage, Status
from expert_pipeline.core.progress_service import ExpertProcessingProgressService, RunNotWanted

T = TypeVar("T")
log = logging.getLogger(__name__)


class IngestFailed(Exception):
    """The expert cannot be completed; the message is shown to the user as is."""


class IngestCancelled(Exception):
    """The user cancelled the expert while this run worked on it."""


class ExpertProgress:
    """Progress writes for one expert within one step of a run."""

    def __init__(
        self,
        engine: Engine,
        expert_id: str,
        min_interval: float,
        heartbeat_interval: float = 10.0,
        run_id: str | None = None,
        stop_requested: Callable[[], bool] | None = None,
        worker: str | None = None,
    ) -> None:
        self.engine = engine
        # The host running this step (steps on Celery workers): each stage's event names it.
        self.worker = worker
        self.expert_id = expert_id
        # Every write carries the run's id: the service drops writes from a run that no longer
        # owns the row (re-queued, or taken over), which then stops (RunSuperseded).
        self.run_id = run_id
        # Whether someone asked Dagster to stop this run (UI, API): tells a user's cancel from
        # the product being shut down, which re-queues the expert instead.
        self.stop_requested = stop_requested or (lambda: True)
        self.min_interval = min_interval
        self.heartbeat_interval = heartbeat_interval
        self._cancelled = threading.Event()
        self.seconds_writing = 0.0
        self.writes = 0
        self._pending: dict[str, Any] | None = None
        self._last_write = 0.0

    def _write(self, what: str, operation: Callable[[ExpertProcessingProgressService], T]) -> T:
        """One write through the progress service, timed, riding out a database outage."""

        def write() -> T:
            with Session(self.engine, expire_on_commit=False) as session:
                return operation(ExpertProcessingProgressService(session))

        started = time.perf_counter()
        result = call_with_db_retry(
            write, on_recovered=self.database_recovered, what=f"progress write ({what})"
        )
        self.seconds_writing += time.perf_counter() - started
        self.writes += 1
        if getattr(result, "status", None) == Status.CANCELLED:
            self._cancelled.set()
        return result

    def database_recovered(self, seconds: float, attempts: int) -> None:
        """Put a database outage the run rode out into the expert's history."""
        self.event(
            f"The database was unreachable for {seconds:.1f} s; processing went on when it came back",
            {"kind": "database_outage", "seconds": round(seconds, 1), "attempts": attempts},
        )

    def start_run(
        self, run_id: str, total_files: int, retry_of: str | None = None, why: str | None = None
    ) -> None:
        self._write("start", lambda s: s.start_run(self.expert_id, run_id, total_files, retry_of, why))

    def raise_if_cancelled(self) -> None:
        """Cancellation is cooperative: the run stops at its next batch boundary."""
        if self._cancelled.is_set():
            raise IngestCancelled("Cancelled by user")

    def _beat(self, stop: threading.Event) -> None:
        while not stop.wait(self.heartbeat_interval):
            try:
                with Session(self.engine) as session:
                    status = ExpertProcessingProgressService(session).heartbeat(self.expert_id, self.run_id)
            except RunNotWanted:
                self._cancelled.set()  # re-queued or taken over: stop at the next batch
                continue
            except Exception as exc:  # noqa: BLE001 - a missed heartbeat shows as "stalled", never as a crash
                log.debug("heartbeat for %s missed: %s", self.expert_id, exc)
                continue
            if status == Status.CANCELLED:
                self._cancelled.set()

    def stage(self, stage: Stage, percentage: float, message: str | None = None, **fields: Any) -> None:
        """Enter a stage: written at once (with any coalesced update folded in), with an event."""
        pending, self._pending = self._pending or {}, None
        pending.pop("progress_percentage", None)
        values = {
            **pending,
            **fields,
            "stage": stage.value,
            "progress_percentage": percentage,
            "event_message": message,
            **({"event_data": {"worker": self.worker}} if self.worker else {}),
        }
        self._write("stage", lambda s: s.update_progress(self.expert_id, run_id=self.run_id, **values))
        self._last_write = time.monotonic()

    def update(self, percentage: float, *, force: bool = False, **fields: Any) -> None:
        """A batch-level update: coalesced, the newest state wins."""
        merged = dict(self._pending or {})
        if "details" in merged and "details" in fields:
            fields["details"] = {**merged["details"], **fields["details"]}
        merged.update(fields, progress_percentage=percentage)
        self._pending = merged
        self.raise_if_cancelled()
        if force or time.monotonic() - self._last_write >= self.min_interval:
            self.flush()

    def flush(self) -> None:
        if self._pending is None:
            return
        pending, self._pending = self._pending, None
        self._write("update", lambda s: s.update_progress(self.expert_id, run_id=self.run_id, **pending))
        self._last_write = time.monotonic()

    def event(self, message: str, data: Mapping[str, Any] | None = None) -> None:
        self.flush()
        self._write("event", lambda s: s.record_event(self.expert_id, message, data, run_id=self.run_id))

    def completed(self, metadata: Mapping[str, Any] | None = None) -> None:
        self._pending = None
        self._write("completed", lambda s: s.mark_completed(self.expert_id, metadata, run_id=self.run_id))

    def failed(self, message: str, detail: str | None = None) -> None:
        self._pending = None
        self._write(
            "failed", lambda s: s.mark_failed(self.expert_id, message, run_id=self.run_id, detail=detail)
        )

    def cancelled(self, reason: str) -> None:
        self._pending = None
        self._write("cancelled", lambda s: s.mark_cancelled(self.expert_id, reason, run_id=self.run_id))

    def _interrupted(self) -> None:
        """The run's process was told to stop: a cancel if someone asked Dagster to stop the run,
        else the product is shutting down, and the expert is queued again to resume on restart."""
        # A shutdown often signals the worker more than once (its group, then each process);
        # a second interrupt inside this bookkeeping would lose the row's final word.
        with _further_interrupts_ignored():
            self._record_interruption()

    def _record_interruption(self) -> None:
        self._pending = None
        try:
            user_stop = self.stop_requested()
        except Exception:  # noqa: BLE001 - instance storage gone with the shutdown: not a user's cancel
            user_stop = False
        if user_stop or self.run_id is None:
            self.cancelled("Cancelled: the run was stopped")
            return
        message = (
            "Interrupted: the pipeline stopped during processing (shutdown or restart); "
            "queued again, it resumes when the pipeline runs, reusing the embeddings already made"
        )
        run_id = self.run_id
        self._write("interrupted", lambda s: s.requeue_interrupted(self.expert_id, run_id, message))

    @contextmanager
    def guard(self, what: str) -> Iterator[ExpertProgress]:
        """Whatever ends a step early ends in the progress row with a readable message.

        While the step works, a heartbeat thread shows the run is alive (so a long provider
        call is not mistaken for a stalled run) and notices a cancellation.
        """
        stop = threading.Event()
        beater = threading.Thread(target=self._beat, args=(stop,), daemon=True)
        beater.start()
        try:
            yield self
            self.flush()
            self.raise_if_cancelled()
        except (IngestCancelled, RunNotWanted) as exc:
            # The row already says cancelled (or finished); the run just stops.
            self._pending = None
            raise dg.Failure(description=str(exc)) from exc
        except dg.DagsterExecutionInterruptedError:
            self._interrupted()
            raise
        except IngestFailed as exc:
            self.failed(str(exc))
            raise dg.Failure(description=str(exc)) from exc
        except Exception as exc:
            # Users get what happened and what to do; the exception (class, keys, paths) goes to
            # the run's log (raised on) and the operators' view of the history.
            self.failed(
                f"{what} failed unexpectedly. Retry; if it fails again, an operator can see the cause "
                "in the expert's history or the Dagster UI",
                detail=f"{exc.__class__.__name__}: {exc}",
            )
            raise
        finally:
            stop.set()


@contextmanager
def _further_interrupts_ignored() -> Iterator[None]:
    """SIGINT/SIGTERM ignored for the block (the run is stopping already); Python handlers can
    only be swapped on the main thread, where Dagster runs the steps in process."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)


class ProgressReporter(dg.ConfigurableResource):
    """Writes expert progress into the progress table through the progress service."""

    database_url: str
    min_write_interval_seconds: float = 0.5
    heartbeat_interval_seconds: float = 10.0

    _engine: Engine | None = PrivateAttr(default=None)

    def for_expert(
        self,
        expert_id: str,
        run_id: str | None = None,
        stop_requested: Callable[[], bool] | None = None,
        worker: str | None = None,
    ) -> ExpertProgress:
        if self._engine is None:
            self._engine = engine_for(self.database_url)
        return ExpertProgress(
            self._engine,
            expert_id,
            self.min_write_interval_seconds,
            self.heartbeat_interval_seconds,
            run_id=run_id,
            stop_requested=stop_requested,
            worker=worker,
        )
