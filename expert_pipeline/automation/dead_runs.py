"""Runs whose worker died (kill -9, lost machine) never report anything again: Dagster's local
run launcher cannot check a worker's health, so the run would stay "started" forever. The
heartbeat the progress reporter writes every few seconds tells us instead.

The sensor marks such a run failed; Dagster's run retries (`run_retries` in dagster.yaml, all
steps) then start it again once, and the embedding cache makes that second run cheap."""

from datetime import timedelta

import dagster as dg

from expert_pipeline.core.models import ExpertProcessingProgress, Status, utcnow
from expert_pipeline.core.progress_service import owned_by
from expert_pipeline.resources.expert_catalog import ExpertCatalog
from expert_pipeline.resources.maintenance_settings import MaintenanceSettings


def check_interval_for(dead_run_after_seconds: float) -> int:
    """How often to look: a few times per allowed silence, but no more than every 30 s."""
    return max(1, min(30, int(dead_run_after_seconds / 6)))


def build_dead_run_sensor(check_interval_seconds: int = 30) -> dg.SensorDefinition:
    @dg.sensor(
        name="dead_run_sensor",
        minimum_interval_seconds=check_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Finds experts whose run worker died (no heartbeat) and fails the run and the expert; "
        "Dagster's run retries then run it again.",
    )
    def dead_run_sensor(
        context: dg.SensorEvaluationContext, catalog: ExpertCatalog, maintenance_settings: MaintenanceSettings
    ) -> dg.SkipReason:
        silent = int(maintenance_settings.dead_run_after_seconds)
        cutoff = utcnow() - timedelta(seconds=silent)
        reason = f"The run worker stopped responding (no heartbeat for {silent} s)"
        handled: list[str] = []
        for record in catalog.silent_runs(cutoff):
            run = context.instance.get_run_by_id(record.run_id) if record.run_id else None
            if run is not None and not run.is_finished:
                context.instance.report_run_failed(run, reason)

            # Only while that run still owns the row and is still silent: it may have moved on.
            def still_dead(r: ExpertProcessingProgress, run_id: str | None = record.run_id) -> bool:
                return owned_by(r, run_id) and (r.heartbeat_at or r.updated_at) < cutoff

            if catalog.finish_if(record.expert_id, Status.FAILED, reason, still_dead):
                handled.append(record.expert_id)
        return dg.SkipReason(f"{len(handled)} dead run(s) handled" if handled else "no dead runs")

    return dead_run_sensor


dead_run_sensor = build_dead_run_sensor()
