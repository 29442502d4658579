"""What the ingest's runs carry and leave behind, read by the sensors and by a retried run:
the tags Dagster puts on them, the run key of a request, how a run's worker died."""

from __future__ import annotations

import re

import dagster as dg

from expert_pipeline.core.run_requests import run_key_for

__all__ = ["PARENT_RUN_TAG", "PARTITION_TAG", "RUN_KEY_TAG", "run_key_for", "worker_death"]

PARTITION_TAG = "dagster/partition"
RUN_KEY_TAG = "dagster/run_key"
PARENT_RUN_TAG = "dagster/parent_run_id"


# The code server reports a run process that died (kill -9, out of memory) in an engine event;
# the failure event itself only says the run "has been marked as failed from outside".
_WORKER_DIED = re.compile(r"Run execution process for \S+ (was terminated by [^.]+|exited[^.]*)")


def worker_death(instance: dg.DagsterInstance, run_id: str) -> str | None:
    """How the run's worker process died, if its code server saw it die (kill -9, OOM)."""
    records = instance.get_records_for_run(
        run_id, of_type=dg.DagsterEventType.ENGINE_EVENT, limit=20, ascending=False
    ).records
    for record in records:
        match = _WORKER_DIED.search(record.event_log_entry.message or "")
        if match:
            return f"the run worker {match.group(1)} (out of memory, or killed)"
    return None
