"""How a pending request becomes exactly one Dagster run, whoever asks first: the status API
right after an upload commits, or the pending-experts sensor (every ~5 s, the safety net).

Both give the run the same run key and the sensor's name, so the sensor's own deduplication
(by run key, among its runs) skips a request the API already launched. No Dagster import here:
the API process stays free of it."""

from __future__ import annotations

from expert_pipeline.core.models import ExpertProcessingProgress

PENDING_SENSOR_NAME = "pending_experts_sensor"
INGEST_JOB_NAME = "ingest_expert"
EXPERTS_PARTITIONS = "experts"
LAUNCHED_BY_TAG = "expert_pipeline/launched_by"


def run_key_for(record: ExpertProcessingProgress) -> str:
    # A new request (a new expert, or a retry that resets the row to pending) has a new
    # started_at, hence a new run key; repeated ticks for the same request are deduplicated.
    return f"{record.expert_id}@{record.started_at.isoformat()}"


def run_tags(record: ExpertProcessingProgress, launched_by: str) -> dict[str, str]:
    """The tags of the request's run beside its partition, as the sensor's run would have them."""
    return {
        "expert_id": record.expert_id,
        "dagster/run_key": run_key_for(record),
        "dagster/sensor_name": PENDING_SENSOR_NAME,
        LAUNCHED_BY_TAG: launched_by,
    }
