"""Everything the Dagster code location holds: assets, jobs, sensors, schedule, resources."""

from __future__ import annotations

import dagster as dg

from expert_pipeline.assets.chunks import expert_chunks
from expert_pipeline.assets.embeddings import expert_embeddings
from expert_pipeline.assets.files import expert_files
from expert_pipeline.assets.text import expert_text
from expert_pipeline.assets.vectors import expert_vectors
from expert_pipeline.cleanup import cleanup_job, cleanup_schedule
from expert_pipeline.core.db import migrate
from expert_pipeline.dead_runs import build_dead_run_sensor, check_interval_for
from expert_pipeline.core.settings import Settings, get_settings
from expert_pipeline.jobs import ingest_job
from expert_pipeline.parts import build_resources, check_parts, log_parts
from expert_pipeline.sensors import ingest_cancelled_sensor, ingest_failure_sensor, pending_experts_sensor
from expert_pipeline.webhook_sensor import webhook_delivery_sensor


def build_definitions(settings: Settings | None = None) -> dg.Definitions:
    settings = settings or get_settings()
    settings.ensure_dirs()
    check_parts(settings)
    log_parts(settings)
    migrate(settings.resolved_database_url)
    return dg.Definitions(
        assets=[expert_files, expert_text, expert_chunks, expert_embeddings, expert_vectors],
        jobs=[ingest_job, cleanup_job],
        sensors=[
            pending_experts_sensor, ingest_failure_sensor, ingest_cancelled_sensor,
            build_dead_run_sensor(check_interval_for(settings.dead_run_after_seconds)),
            webhook_delivery_sensor,
        ],
        schedules=[cleanup_schedule],
        resources=build_resources(settings),
    )

