"""Sensors: start a run for every new expert; turn runs that die into truthful progress rows."""

import re

import dagster as dg
from sqlalchemy import select
from sqlalchemy.orm import Session

from expert_pipeline.core.models import ExpertProcessingProgress, Status
from expert_pipeline.core.progress_service import ExpertProcessingProgressService, ProgressNotFound
from expert_pipeline.jobs import ingest_job
from expert_pipeline.partitions import experts
from expert_pipeline.resources.expert_catalog import ExpertCatalog

PARTITION_TAG = "dagster/partition"


def run_key_for(record: ExpertProcessingProgress) -> str:
    # A new request (a new expert, or a retry that resets the row to pending) has a new
    # started_at, hence a new run key; repeated ticks for the same request are deduplicated.
    return f"{record.expert_id}@{record.started_at.isoformat()}"


@dg.sensor(
    job=ingest_job,
    minimum_interval_seconds=1,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Picks up experts waiting in `pending`, adds their partition and requests one run each.",
)
def pending_experts_sensor(context: dg.SensorEvaluationContext, catalog: ExpertCatalog) -> dg.SensorResult:
    with Session(catalog.engine) as session:
        pending = list(
            session.scalars(
                select(ExpertProcessingProgress)
                .where(ExpertProcessingProgress.status == Status.PENDING)
                .order_by(ExpertProcessingProgress.started_at)
                .limit(100)
            )
        )
    known = set(context.instance.get_dynamic_partitions(experts.name))
    new_keys = sorted({r.expert_id for r in pending} - known)
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(partition_key=r.expert_id, run_key=run_key_for(r), tags={"expert_id": r.expert_id})
            for r in pending
        ],
        dynamic_partitions_requests=[experts.build_add_request(new_keys)] if new_keys else [],
    )


def _expert_of(run: dg.DagsterRun) -> str | None:
    return run.tags.get(PARTITION_TAG)


def _finish(catalog: ExpertCatalog, run: dg.DagsterRun, status: Status, message: str) -> None:
    expert_id = _expert_of(run)
    if not expert_id:
        return
    with Session(catalog.engine) as session:
        service = ExpertProcessingProgressService(session)
        record = service.get_progress(expert_id)
        if record is None:
            return  # deleted meanwhile
        if record.run_id not in (None, run.run_id) and record.status == Status.IN_PROGRESS:
            # A retry already owns the row: keep its progress, but let the history say why.
            service.record_event(expert_id, f"Run {run.run_id} ended: {message}", {"run_id": run.run_id})
            return
        try:
            if status == Status.CANCELLED:
                service.mark_cancelled(expert_id, message)
            else:
                service.mark_failed(expert_id, message)
        except ProgressNotFound:
            pass  # the expert was deleted meanwhile; nothing left to report on


@dg.run_failure_sensor(
    monitored_jobs=[ingest_job],
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=5,
    description="Marks the expert failed when its run dies outside asset code (crash, lost worker).",
)
def ingest_failure_sensor(context: dg.RunFailureSensorContext, catalog: ExpertCatalog) -> None:
    reason = _worker_death(context) or context.failure_event.message or "the run failed"
    _finish(catalog, context.dagster_run, Status.FAILED, f"Processing stopped unexpectedly: {reason}")


# The code server reports a run process that died (kill -9, out of memory) in an engine event;
# the failure event itself only says the run "has been marked as failed from outside".
_WORKER_DIED = re.compile(r"Run execution process for \S+ (was terminated by [^.]+|exited[^.]*)")


def _worker_death(context: dg.RunFailureSensorContext) -> str | None:
    records = context.instance.get_records_for_run(
        context.dagster_run.run_id, of_type=dg.DagsterEventType.ENGINE_EVENT, limit=20, ascending=False
    ).records
    for record in records:
        match = _WORKER_DIED.search(record.event_log_entry.message or "")
        if match:
            return f"the run worker {match.group(1)} (out of memory, or killed)"
    return None


@dg.run_status_sensor(
    run_status=dg.DagsterRunStatus.CANCELED,
    monitored_jobs=[ingest_job],
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=5,
    description="Marks the expert cancelled when its run is terminated (UI or API).",
)
def ingest_cancelled_sensor(context: dg.RunStatusSensorContext, catalog: ExpertCatalog) -> None:
    run = context.dagster_run
    _finish(catalog, run, Status.CANCELLED, f"Cancelled: run {run.run_id} was terminated")
