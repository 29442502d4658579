"""Runs whose worker died (kill -9, lost machine) never report anything again: Dagster's local
run launcher cannot check a worker's health, so the run would stay "started" forever. The
heartbeat the progress reporter writes every few seconds tells us instead."""

from datetime import timedelta

import dagster as dg
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from expert_pipeline.core.models import ExpertProcessingProgress, ProgressEvent, Status, utcnow
from expert_pipeline.core.progress_service import ExpertProcessingProgressService
from expert_pipeline.resources.expert_catalog import ExpertCatalog
from expert_pipeline.resources.maintenance_settings import MaintenanceSettings

REQUEUE_MESSAGE = "Re-queued automatically: the run worker stopped responding"


@dg.sensor(
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Finds experts whose run worker died (no heartbeat), fails that run and re-queues the expert once.",
)
def dead_run_sensor(
    context: dg.SensorEvaluationContext, catalog: ExpertCatalog, maintenance_settings: MaintenanceSettings
) -> dg.SkipReason:
    P = ExpertProcessingProgress
    cutoff = utcnow() - timedelta(seconds=maintenance_settings.dead_run_after_seconds)
    handled: list[str] = []
    with Session(catalog.engine) as session:
        dead = list(
            session.scalars(select(P).where(P.status == Status.IN_PROGRESS, func.coalesce(P.heartbeat_at, P.updated_at) < cutoff))
        )
        for record in dead:
            silent = int(maintenance_settings.dead_run_after_seconds)
            reason = f"The run worker stopped responding (no heartbeat for {silent} s)"
            run = context.instance.get_run_by_id(record.run_id) if record.run_id else None
            if run is not None and not run.is_finished:
                context.instance.report_run_failed(run, reason)
            service = ExpertProcessingProgressService(session)
            service.mark_failed(record.expert_id, reason)
            requeues = session.scalar(
                select(func.count()).where(ProgressEvent.expert_id == record.expert_id, ProgressEvent.message == REQUEUE_MESSAGE)
            )
            if (requeues or 0) < maintenance_settings.max_automatic_requeues:
                service.create_progress_record(expert_id=record.expert_id, agent_id=record.agent_id, total_files=record.total_files)
                service.record_event(record.expert_id, REQUEUE_MESSAGE, {"dead_run_id": record.run_id})
            handled.append(record.expert_id)
    return dg.SkipReason(f"{len(handled)} dead run(s) handled" if handled else "no dead runs")
