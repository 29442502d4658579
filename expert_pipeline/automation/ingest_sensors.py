"""Sensors: start a run for every new expert; turn runs that die into truthful progress rows."""

import time

import dagster as dg

from expert_pipeline.automation.run_records import (
    PARENT_RUN_TAG,
    PARTITION_TAG,
    RUN_KEY_TAG,
    run_key_for,
    worker_death,
)
from expert_pipeline.core.models import ExpertProcessingProgress, Status
from expert_pipeline.core.pipeline_health import BEAT_INTERVAL_SECONDS
from expert_pipeline.core.progress_service import owned_by
from expert_pipeline.core.run_requests import LAUNCHED_BY_TAG, PENDING_SENSOR_NAME
from expert_pipeline.jobs import ingest_job
from expert_pipeline.partitions import EXPERTS, experts
from expert_pipeline.resources.expert_catalog import ExpertCatalog


@dg.sensor(
    name=PENDING_SENSOR_NAME,
    job=ingest_job,
    minimum_interval_seconds=1,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Picks up experts waiting in `pending`, adds their partition and requests one run each.",
)
def pending_experts_sensor(context: dg.SensorEvaluationContext, catalog: ExpertCatalog) -> dg.SensorResult:
    cursor = _beat_if_due(context, catalog)
    pending = catalog.pending_requests(limit=100)
    known = set(context.instance.get_dynamic_partitions(EXPERTS))
    new_keys = sorted({r.expert_id for r in pending} - known)
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(
                partition_key=r.expert_id,
                run_key=run_key_for(r),
                tags={"expert_id": r.expert_id, LAUNCHED_BY_TAG: "sensor"},
            )
            for r in pending
        ],
        dynamic_partitions_requests=[experts.build_add_request(new_keys)] if new_keys else [],
        cursor=cursor,
    )


def _beat_if_due(context: dg.SensorEvaluationContext, catalog: ExpertCatalog) -> str | None:
    """Leave the pipeline's heartbeat (this sensor ticking proves the daemon and the code
    location are up), with what the API cannot see without Dagster: the run queue."""
    now = time.time()
    last = float(context.cursor) if context.cursor else 0.0
    if now - last < BEAT_INTERVAL_SECONDS:
        return context.cursor
    queued = context.instance.get_runs_count(dg.RunsFilter(statuses=[dg.DagsterRunStatus.QUEUED]))
    catalog.record_pipeline_beat({"queued_runs": queued})
    return str(now)


def _expert_of(run: dg.DagsterRun) -> str | None:
    return run.tags.get(PARTITION_TAG)


def _finish(
    context: dg.RunStatusSensorContext,
    catalog: ExpertCatalog,
    status: Status,
    message: str,
    detail: str | None = None,
) -> None:
    """Give the expert its final state for a run that ended outside asset code, but only when
    that run owns the row: a cancelled or killed run's end must not overwrite a newer request."""
    run = context.dagster_run
    expert_id = _expert_of(run)
    if not expert_id:
        return

    def owns(record: ExpertProcessingProgress) -> bool:
        if record.run_id is not None:
            return owned_by(record, run.run_id)
        # Not claimed yet: the run died before its first step, and is the run of this request.
        return record.status == Status.PENDING and run.tags.get(RUN_KEY_TAG) == run_key_for(record)

    if catalog.finish_if(expert_id, status, message, owns, detail):
        return
    record = catalog.progress(expert_id)
    if record is None or record.status != Status.IN_PROGRESS or record.run_id is None:
        return  # deleted, re-queued by a user, or already final: nothing of this run to say
    owner = context.instance.get_run_by_id(record.run_id)
    if owner is not None and owner.tags.get(PARENT_RUN_TAG) == run.run_id:
        # Dagster's retry of this run already owns the row: keep its progress, say why it exists.
        catalog.note(expert_id, f"Run {run.run_id} ended: {message}", {"run_id": run.run_id})


@dg.run_failure_sensor(
    monitored_jobs=[ingest_job],
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=5,
    description="Marks the expert failed when its run dies outside asset code (crash, lost worker).",
)
def ingest_failure_sensor(context: dg.RunFailureSensorContext, catalog: ExpertCatalog) -> None:
    # Dagster's own words ("Execution of run ... failed. Steps failed: [...]") are for operators.
    reason = worker_death(context.instance, context.dagster_run.run_id) or (
        "the run ended before its steps could report. Retry; if it fails again, an operator can see the "
        "cause in the Dagster UI"
    )
    _finish(
        context,
        catalog,
        Status.FAILED,
        f"Processing stopped unexpectedly: {reason}",
        detail=context.failure_event.message or None,
    )


@dg.run_status_sensor(
    run_status=dg.DagsterRunStatus.CANCELED,
    monitored_jobs=[ingest_job],
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=5,
    description="Marks the expert cancelled when its run is terminated (UI or API).",
)
def ingest_cancelled_sensor(context: dg.RunStatusSensorContext, catalog: ExpertCatalog) -> None:
    _finish(context, catalog, Status.CANCELLED, f"Cancelled: run {context.dagster_run.run_id} was terminated")
