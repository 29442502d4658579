"""The automation's Dagster definitions: sensors, the cleanup job and its schedule."""

from __future__ import annotations

import dagster as dg

from expert_pipeline.automation.cleanup import cleanup_job, cleanup_schedule
from expert_pipeline.automation.dead_runs import build_dead_run_sensor, check_interval_for
from expert_pipeline.automation.ingest_sensors import (
    ingest_cancelled_sensor,
    ingest_failure_sensor,
    pending_experts_sensor,
)
from expert_pipeline.automation.notifications import webhook_delivery_sensor
from expert_pipeline.core.settings import Settings


def automation_definitions(settings: Settings) -> dg.Definitions:
    return dg.Definitions(
        jobs=[cleanup_job],
        sensors=[
            pending_experts_sensor,
            ingest_failure_sensor,
            ingest_cancelled_sensor,
            build_dead_run_sensor(check_interval_for(settings.dead_run_after_seconds)),
            webhook_delivery_sensor,
        ],
        schedules=[cleanup_schedule],
    )
