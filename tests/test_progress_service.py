"""The progress service's guarantees, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from datetime import UTC

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from expert_pipeline.core.models import Status
from expert_pipeline.core.progress_service import (
    ExpertProcessingProgressService,
    InvalidProgressUpdate,
    ProgressNotFound,
    RunSuperseded,
    owned_by,
)


@pytest.fixture
def service(db: Session) -> ExpertProcessingProgressService:
    return ExpertProcessingProgressService(db)


def test_spec_code_example_runs_as_written(db: Session) -> None:
    # The specification's "Code Examples", verbatim apart from the import path.
    progress_service = ExpertProcessingProgressService(db)
    progress_record = progress_service.create_progress_record(
        expert_id="expert-123", agent_id="agent-456", total_files=5
    )
    assert progress_record.status == "pending"
    assert progress_record.stage == "file_processing"
    assert progress_record.total_files == 5

    progress_service.update_progress(
        expert_id="expert-123", stage="embedding", current_batch=10, total_batches=50, progress_percentage=20.0
    )
    record = progress_service.get_progress("expert-123")
    assert record is not None
    assert (record.stage, record.status, record.current_batch, record.total_batches) == (
        "embedding", "in_progress", 10, 50,
    )
    assert record.progress_percentage == 20.0

    progress_service.mark_completed(expert_id="expert-123", metadata={"total_time": 120.5})
    record = progress_service.get_progress("expert-123")
    assert record is not None
    assert (record.status, record.stage, record.progress_percentage) == ("completed", "complete", 100.0)
    assert record.details["total_time"] == 120.5
    assert record.completed_at is not None

    progress_service.create_progress_record(expert_id="expert-999", agent_id=None, total_files=1)
    progress_service.mark_failed(expert_id="expert-999", error_message="OpenAI API error")
    failed = progress_service.get_progress("expert-999")
    assert failed is not None
    assert (failed.status, failed.stage, failed.error_message) == ("failed", "failed", "OpenAI API error")


def test_timestamps_are_timezone_aware_utc(service: ExpertProcessingProgressService) -> None:
    service.create_progress_record(expert_id="e1", total_files=1)
    service.mark_completed(expert_id="e1")
    record = service.get_progress("e1")
    assert record is not None
    for value in (record.started_at, record.updated_at, record.completed_at):
        assert value is not None and value.tzinfo is not None
        assert value.utcoffset() == UTC.utcoffset(None)
    assert record.started_at <= record.updated_at == record.completed_at


def test_percentage_never_decreases_and_stays_in_range(service: ExpertProcessingProgressService) -> None:
    service.create_progress_record(expert_id="e1", total_files=1)
    seen = []
    for pct in (10, 50, 30, -5, 49.9, 250):
        seen.append(service.update_progress(expert_id="e1", progress_percentage=pct).progress_percentage)
    assert seen == [10, 50, 50, 50, 50, 99.0]  # only completion may show 100
    assert service.mark_completed(expert_id="e1").progress_percentage == 100.0


def test_new_run_starts_from_zero(service: ExpertProcessingProgressService) -> None:
    service.create_progress_record(expert_id="e1", total_files=2)
    service.update_progress(expert_id="e1", stage="embedding", progress_percentage=60, current_batch=3)
    service.mark_failed(expert_id="e1", error_message="boom")
    record = service.create_progress_record(expert_id="e1", total_files=2)
    assert (record.status, record.stage, record.progress_percentage, record.current_batch) == (
        "pending", "file_processing", 0.0, 0,
    )
    assert record.completed_at is None and record.error_message is None


def test_only_spec_stages_and_statuses(service: ExpertProcessingProgressService) -> None:
    service.create_progress_record(expert_id="e1")
    with pytest.raises(InvalidProgressUpdate, match="unknown stage 'chunking'"):
        service.update_progress(expert_id="e1", stage="chunking")
    with pytest.raises(InvalidProgressUpdate, match="unknown status 'paused'"):
        service.update_progress(expert_id="e1", status="paused")
    with pytest.raises(InvalidProgressUpdate, match="must be >= 0"):
        service.update_progress(expert_id="e1", current_batch=-1)
    record = service.get_progress("e1")
    assert record is not None and record.stage == "file_processing" and record.current_batch == 0


def test_finished_run_is_never_reopened(service: ExpertProcessingProgressService) -> None:
    service.create_progress_record(expert_id="e1")
    done = service.mark_completed(expert_id="e1")
    completed_at = done.completed_at
    service.update_progress(expert_id="e1", stage="embedding", progress_percentage=10)
    service.mark_failed(expert_id="e1", error_message="late failure")
    record = service.get_progress("e1")
    assert record is not None
    assert (record.status, record.stage, record.error_message) == ("completed", "complete", None)
    assert record.completed_at == completed_at


def test_completed_at_only_when_run_ends(service: ExpertProcessingProgressService) -> None:
    service.create_progress_record(expert_id="e1")
    assert service.update_progress(expert_id="e1", stage="text_extraction").completed_at is None
    cancelled = service.mark_cancelled(expert_id="e1", reason="Cancelled by user")
    assert cancelled.status == "cancelled" and cancelled.completed_at is not None


def test_events_record_history_in_order(service: ExpertProcessingProgressService) -> None:
    service.create_progress_record(expert_id="e1", total_files=1)
    service.update_progress(expert_id="e1", stage="text_extraction", progress_percentage=5)
    service.update_progress(expert_id="e1", progress_percentage=10)  # no stage change: no event
    service.record_event("e1", "report.pdf failed: password-protected PDF", {"filename": "report.pdf"})
    service.update_progress(expert_id="e1", stage="embedding", progress_percentage=30)
    service.mark_completed(expert_id="e1")
    events = service.list_events("e1")
    assert [(e.stage, e.status) for e in events] == [
        ("file_processing", "pending"),
        ("text_extraction", "in_progress"),
        ("text_extraction", "in_progress"),
        ("embedding", "in_progress"),
        ("complete", "completed"),
    ]
    assert events[2].data == {"filename": "report.pdf"}
    assert [e.id for e in events] == sorted(e.id for e in events)


def test_active_lists_pending_and_in_progress_only(service: ExpertProcessingProgressService) -> None:
    for expert_id in ("a", "b", "c", "d"):
        service.create_progress_record(expert_id=expert_id)
    service.update_progress(expert_id="b", stage="embedding")
    service.mark_completed(expert_id="c")
    service.mark_failed(expert_id="d", error_message="x")
    assert sorted(r.expert_id for r in service.get_active_progress()) == ["a", "b"]


def test_delete_removes_record_and_events(service: ExpertProcessingProgressService) -> None:
    service.create_progress_record(expert_id="e1")
    assert service.delete_progress("e1") is True
    assert service.get_progress("e1") is None and service.list_events("e1") == []
    assert service.delete_progress("e1") is False
    with pytest.raises(ProgressNotFound):
        service.update_progress(expert_id="e1", progress_percentage=5)


def test_concurrent_writers_for_different_experts(engine: Engine) -> None:
    experts = [f"expert-{i}" for i in range(12)]
    with Session(engine) as session:
        for expert_id in experts:
            ExpertProcessingProgressService(session).create_progress_record(expert_id=expert_id, total_files=1)
    errors: list[BaseException] = []

    def work(expert_id: str) -> None:
        try:
            with Session(engine, expire_on_commit=False) as session:
                service = ExpertProcessingProgressService(session)
                for batch in range(1, 31):
                    service.update_progress(
                        expert_id=expert_id, stage="embedding", current_batch=batch,
                        total_batches=30, progress_percentage=batch * 3,
                        details={"batch": f"{batch}/30", "owner": expert_id},
                    )
                service.mark_completed(expert_id=expert_id)
        except BaseException as exc:  # noqa: BLE001 - surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(e,)) for e in experts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    with Session(engine) as session:
        service = ExpertProcessingProgressService(session)
        for expert_id in experts:
            record = service.get_progress(expert_id)
            assert record is not None
            assert (record.status, record.current_batch, record.progress_percentage) == ("completed", 30, 100.0)
            assert record.details == {"batch": "30/30", "owner": expert_id}  # nobody else's write


# -- who may write: only the run that owns the row -------------------------------------------


def test_a_run_cannot_write_after_its_request_was_replaced(service: ExpertProcessingProgressService) -> None:
    """Cancel then retry: the cancelled run's late writes and final state are dropped, and it
    is told to stop; the new request's row stays `pending` for its own run."""
    service.create_progress_record("e1", total_files=1)
    service.start_run("e1", run_id="old")
    service.update_progress("e1", stage="embedding", progress_percentage=40.0, run_id="old")
    service.mark_cancelled("e1", "Cancelled by user")
    service.create_progress_record("e1", total_files=1)  # POST /retry
    with pytest.raises(RunSuperseded):
        service.update_progress("e1", progress_percentage=60.0, run_id="old")
    with pytest.raises(RunSuperseded):
        service.heartbeat("e1", run_id="old")
    with pytest.raises(RunSuperseded):
        service.record_event("e1", "late news", run_id="old")
    service.mark_failed("e1", "Processing stopped unexpectedly", run_id="old")
    record = service.get_progress("e1")
    assert record is not None
    assert (record.status, record.run_id, record.progress_percentage, record.error_message) == ("pending", None, 0.0, None)
    # The new request's run claims it; the old one cannot take it back, even as a "retry".
    with pytest.raises(RunSuperseded):
        service.start_run("e1", run_id="old-retry", retry_of="old")
    service.start_run("e1", run_id="new")
    with pytest.raises(RunSuperseded):
        service.start_run("e1", run_id="old")
    service.mark_completed("e1", run_id="new")
    assert service.get_progress("e1").status == "completed"  # type: ignore[union-attr]


def test_dagster_retry_resumes_only_the_run_it_retries(service: ExpertProcessingProgressService) -> None:
    service.create_progress_record("e2", total_files=1)
    service.start_run("e2", run_id="first")
    service.mark_failed("e2", "worker died", run_id="first")
    service.start_run("e2", run_id="second", retry_of="first")
    record = service.get_progress("e2")
    assert record is not None and (record.status, record.run_id) == ("in_progress", "second")
    # A late final state from the first run is not the second run's.
    service.mark_failed("e2", "late", run_id="first")
    assert service.get_progress("e2").status == "in_progress"  # type: ignore[union-attr]


def test_an_interrupted_run_requeues_its_expert(service: ExpertProcessingProgressService) -> None:
    service.create_progress_record("e3", total_files=1)
    queued_at = service.get_progress("e3").started_at  # type: ignore[union-attr]
    service.start_run("e3", run_id="r1")
    assert service.requeue_interrupted("e3", "r1", "Interrupted: the pipeline stopped")
    record = service.get_progress("e3")
    assert record is not None and (record.status, record.run_id) == ("pending", None)
    assert record.started_at > queued_at  # a new request: the sensor gives it a new run key
    messages = [e.message for e in service.list_events("e3")]
    assert messages[-2:] == ["Interrupted: the pipeline stopped", "Queued for processing"]
    # Not the owner any more: a second interruption report changes nothing.
    assert not service.requeue_interrupted("e3", "r1", "again")


def test_a_final_state_never_overwrites_a_newer_request(service: ExpertProcessingProgressService) -> None:
    service.create_progress_record("e4", total_files=1)
    service.start_run("e4", run_id="r1")
    service.create_progress_record("e4", total_files=1)  # re-queued (e.g. files added) meanwhile
    assert not service.finish_if("e4", Status.FAILED, "dead", lambda r: owned_by(r, "r1"))
    assert service.get_progress("e4").status == "pending"  # type: ignore[union-attr]
