"""Sensors: new experts start runs; runs that die end in a truthful progress row."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
from sqlalchemy.orm import Session

from expert_pipeline.core.db import engine_for
from expert_pipeline.core.progress_service import ExpertProcessingProgressService
from expert_pipeline.core.settings import Settings
from expert_pipeline.definitions import build_definitions
from expert_pipeline.resources.parts import build_resources
from expert_pipeline.partitions import experts
from expert_pipeline.automation.dead_runs import dead_run_sensor
from expert_pipeline.automation.ingest_sensors import (
    RUN_KEY_TAG,
    ingest_cancelled_sensor,
    ingest_failure_sensor,
    pending_experts_sensor,
    run_key_for,
)
from tests.pipeline_helpers import create_expert, run_ingest


def _txt(tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    path.write_text("Some text about tides and the moon. " * 20)
    return path


def _run_key(settings: Settings, expert_id: str) -> str:
    """The run key the pending sensor gives the expert's current request."""
    with Session(engine_for(settings.resolved_database_url)) as session:
        record = ExpertProcessingProgressService(session).get_progress(expert_id)
        assert record is not None
        return run_key_for(record)


def _progress(settings: Settings, expert_id: str) -> tuple[str, str | None]:
    with Session(engine_for(settings.resolved_database_url)) as session:
        record = ExpertProcessingProgressService(session).get_progress(expert_id)
        assert record is not None
        return record.status, record.error_message


def test_definitions_load(settings: Settings) -> None:
    defs = build_definitions(settings)
    assert defs.resolve_job_def("ingest_expert").partitions_def == experts
    assert {s.name for s in defs.sensors or []} == {
        "pending_experts_sensor", "ingest_failure_sensor", "ingest_cancelled_sensor", "webhook_delivery_sensor",
        "dead_run_sensor",
    }
    assert [s.name for s in defs.schedules or []] == ["cleanup_job_schedule"]


def test_pending_sensor_requests_one_run_per_waiting_expert(
    settings: Settings, instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    first = create_expert(settings, [_txt(tmp_path, "a.txt")])
    second = create_expert(settings, [_txt(tmp_path, "b.txt")])
    done = create_expert(settings, [_txt(tmp_path, "c.txt")])
    with Session(engine_for(settings.resolved_database_url)) as session:
        ExpertProcessingProgressService(session).mark_completed(expert_id=done)

    context = dg.build_sensor_context(instance=instance, resources=build_resources(settings))
    result = pending_experts_sensor(context)
    assert isinstance(result, dg.SensorResult)
    assert sorted(r.partition_key for r in result.run_requests or []) == sorted([first, second])
    assert len({r.run_key for r in result.run_requests or []}) == 2
    (add,) = result.dynamic_partitions_requests or []
    assert sorted(add.partition_keys) == sorted([first, second])

    # Once the partitions exist, the next tick asks for no new ones and repeats the same run
    # keys, which Dagster deduplicates: an expert never gets two runs for one request.
    instance.add_dynamic_partitions(experts.name, [first, second])
    again = pending_experts_sensor(dg.build_sensor_context(instance=instance, resources=build_resources(settings)))
    assert again.dynamic_partitions_requests == []
    assert {r.run_key for r in again.run_requests or []} == {r.run_key for r in result.run_requests or []}


class BrokenStorage(dg.ConfigurableResource):
    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        raise ConnectionError("storage endpoint refused the connection")


def test_failure_outside_asset_code_marks_expert_failed(
    settings: Settings, instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    expert_id = create_expert(settings, [_txt(tmp_path, "a.txt")])
    result = run_ingest(
        settings, expert_id, instance,
        resources={"file_storage": BrokenStorage()}, tags={RUN_KEY_TAG: _run_key(settings, expert_id)},
    )
    assert not result.success
    assert _progress(settings, expert_id)[0] == "pending"  # no asset code ran to report it

    run = instance.get_run_by_id(result.run_id)
    assert run is not None
    failure = result.get_run_failure_event()
    context = dg.build_run_status_sensor_context(
        sensor_name="ingest_failure_sensor", dagster_event=failure, dagster_instance=instance,
        dagster_run=run, resources=build_resources(settings),
    ).for_run_failure()
    ingest_failure_sensor(context)
    status, message = _progress(settings, expert_id)
    assert status == "failed"
    assert message is not None and message.startswith("Processing stopped unexpectedly")


def test_failure_of_an_earlier_requests_run_leaves_the_new_request_alone(
    settings: Settings, instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    """Cancel then retry at once: the cancelled request's run ends after the retry re-queued the
    expert. Its failure belongs to the old request and must not fail the new one."""
    expert_id = create_expert(settings, [_txt(tmp_path, "a.txt")])
    old_key = _run_key(settings, expert_id)
    with Session(engine_for(settings.resolved_database_url)) as session:
        service = ExpertProcessingProgressService(session)
        service.mark_cancelled(expert_id, "Cancelled by user")
        service.create_progress_record(expert_id, total_files=1)  # POST /retry
    assert _run_key(settings, expert_id) != old_key
    result = run_ingest(
        settings, expert_id, instance, resources={"file_storage": BrokenStorage()}, tags={RUN_KEY_TAG: old_key}
    )
    run = instance.get_run_by_id(result.run_id)
    assert run is not None
    context = dg.build_run_status_sensor_context(
        sensor_name="ingest_failure_sensor", dagster_event=result.get_run_failure_event(),
        dagster_instance=instance, dagster_run=run, resources=build_resources(settings),
    ).for_run_failure()
    ingest_failure_sensor(context)
    assert _progress(settings, expert_id) == ("pending", None)


def test_cancelled_run_marks_expert_cancelled(
    settings: Settings, instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    expert_id = create_expert(settings, [_txt(tmp_path, "a.txt")])
    job = build_definitions(settings).resolve_job_def("ingest_expert")
    run = instance.create_run_for_job(
        job, tags={"dagster/partition": expert_id, RUN_KEY_TAG: _run_key(settings, expert_id)}
    )
    instance.report_run_canceling(run)
    instance.report_run_canceled(run)
    run = instance.get_run_by_id(run.run_id)
    assert run is not None and run.status == dg.DagsterRunStatus.CANCELED
    event = next(
        e.dagster_event for e in instance.all_logs(run.run_id)
        if e.dagster_event and e.dagster_event.event_type == dg.DagsterEventType.RUN_CANCELED
    )
    context = dg.build_run_status_sensor_context(
        sensor_name="ingest_cancelled_sensor", dagster_event=event, dagster_instance=instance,
        dagster_run=run, resources=build_resources(settings),
    )
    ingest_cancelled_sensor(context)
    status, message = _progress(settings, expert_id)
    assert status == "cancelled" and message is not None and run.run_id in message


def test_dead_run_worker_is_failed_and_its_retry_resumes(
    settings: Settings, instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    from datetime import timedelta

    from sqlalchemy import update

    from expert_pipeline.core.models import ExpertProcessingProgress, utcnow

    settings = settings.model_copy(update={"dead_run_after_seconds": 30})
    expert_id = create_expert(settings, [_txt(tmp_path, "a.txt")])
    instance.add_dynamic_partitions(experts.name, [expert_id])
    job = build_definitions(settings).resolve_job_def("ingest_expert")
    assert job.tags.get("dagster/retry_strategy") == "ALL_STEPS"
    engine = engine_for(settings.resolved_database_url)

    dead = instance.create_run_for_job(job, tags={"dagster/partition": expert_id})
    with Session(engine) as session:
        ExpertProcessingProgressService(session).start_run(expert_id, run_id=dead.run_id)
        session.execute(  # the worker was killed: no heartbeat since
            update(ExpertProcessingProgress)
            .where(ExpertProcessingProgress.expert_id == expert_id)
            .values(heartbeat_at=utcnow() - timedelta(seconds=31), updated_at=utcnow() - timedelta(seconds=31))
        )
        session.commit()

    def tick() -> str:
        context = dg.build_sensor_context(instance=instance, resources=build_resources(settings))
        return str(dead_run_sensor(context).skip_message)

    assert tick() == "1 dead run(s) handled"
    assert instance.get_run_by_id(dead.run_id).status == dg.DagsterRunStatus.FAILURE  # type: ignore[union-attr]
    status, message = _progress(settings, expert_id)
    assert status == "failed" and "no heartbeat for 30 s" in (message or "")
    assert tick() == "no dead runs"

    # Dagster's automatic retry of that run (tagged with its parent) picks the expert up again.
    retry = run_ingest(settings, expert_id, instance, tags={"dagster/parent_run_id": dead.run_id})
    assert retry.success
    assert _progress(settings, expert_id) == ("completed", None)
    with Session(engine) as session:
        messages = [e.message for e in ExpertProcessingProgressService(session).list_events(expert_id)]
    assert "Processing restarted automatically after a failed run" in messages
