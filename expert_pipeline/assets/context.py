"""What every ingest asset starts from: the expert, its work area and its progress handle."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg

from expert_pipeline.adapters.service_trouble import TroubleReport
from expert_pipeline.ingest.shared_hand_over import begin_step, runs_on_workers, worker_name
from expert_pipeline.ingest.work_area import ExpertWorkArea
from expert_pipeline.resources.ingest_settings import IngestSettings
from expert_pipeline.resources.progress_reporter import ExpertProgress, ProgressReporter


@dataclass
class StageRun:
    expert_id: str
    work: ExpertWorkArea
    progress: ExpertProgress
    started: float = field(default_factory=time.perf_counter)

    def seconds(self) -> float:
        return round(time.perf_counter() - self.started, 3)

    def note(self, report: TroubleReport | None) -> None:
        """A provider's retries, in the expert's history (see TroubleEpisodes)."""
        if report is not None:
            self.progress.event(report.message, report.data("provider_retries"))

    def metadata(self, **values: Any) -> dict[str, Any]:
        """Materialization metadata every stage reports, plus its own figures."""
        return {
            **values,
            "seconds": self.seconds(),
            "progress_writes": self.progress.writes,
            "progress_write_seconds": round(self.progress.seconds_writing, 4),
        }


def stage_run(
    context: dg.AssetExecutionContext, settings: IngestSettings, reporter: ProgressReporter
) -> StageRun:
    expert_id = context.partition_key
    run_id = context.run.run_id
    instance = context.instance

    def stop_requested() -> bool:
        # Dagster marks a run CANCELING when the UI or API terminates it; a shutdown does not.
        run = instance.get_run_by_id(run_id)
        return run is not None and run.status in (dg.DagsterRunStatus.CANCELING, dg.DagsterRunStatus.CANCELED)

    on_workers = runs_on_workers(context)
    run = StageRun(
        expert_id=expert_id,
        # One work area per run: a run superseded by a retry may still be writing its own.
        work=ExpertWorkArea(Path(settings.work_dir) / expert_id, run_id),
        progress=reporter.for_expert(
            expert_id,
            run_id=run_id,
            stop_requested=stop_requested,
            worker=worker_name() if on_workers else None,
        ),
    )
    begin_step(context, run.work, run.progress)  # on Celery workers: fetch what earlier steps stored
    return run
