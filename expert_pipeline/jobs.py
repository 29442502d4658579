"""The ingest job, with the executor the settings choose (EXECUTOR=in_process or celery)."""

from __future__ import annotations

from typing import Any

import dagster as dg

from expert_pipeline.core.run_requests import INGEST_JOB_NAME as JOB_NAME
from expert_pipeline.core.settings import Settings, get_settings
from expert_pipeline.partitions import experts

# Celery queues: the embedding step alone on its own (its workers' concurrency is the provider's
# rate limit), every other step on the ingest queue.
EMBED_QUEUE = "embed"
INGEST_QUEUE = "ingest"


def celery_app_config(settings: Settings) -> dict[str, Any]:
    """dagster-celery's executor config; `expert-pipeline worker` builds its app from the same."""
    if not settings.celery_broker_url:
        raise ValueError("EXECUTOR=celery needs CELERY_BROKER_URL (e.g. redis://broker-host:6379/0)")
    timeout = settings.celery_visibility_timeout_seconds
    return {
        "broker": settings.celery_broker_url,
        "backend": settings.celery_backend_url or settings.celery_broker_url,
        "config_source": {
            # Acknowledged only once the step is done: a worker host that dies mid-step leaves its
            # task unacknowledged, and the broker hands it to another worker.
            "task_acks_late": True,
            "task_reject_on_worker_lost": True,
            "worker_prefetch_multiplier": 1,
            "task_default_queue": INGEST_QUEUE,
            "broker_connection_retry_on_startup": True,
            "broker_transport_options": {
                "visibility_timeout": timeout,
                # Look for tasks of lost workers at a tenth of the timeout (kombu: every 100 s).
                "unacked_restore_interval": max(1, min(10, round(timeout / 10))),
                "unacked_restore_throttle": 1,
                # dagster-celery's defaults for publishing, kept.
                "max_retries": 3,
                "interval_start": 0,
                "interval_step": 0.2,
                "interval_max": 0.5,
            },
        },
    }


def build_ingest_job(settings: Settings) -> dg.UnresolvedAssetJobDefinition:
    if settings.executor == "celery":
        from expert_pipeline.ingest.celery_executor import patient_celery_executor
        from expert_pipeline.ingest.shared_hand_over import hand_over_hook

        executor: dg.ExecutorDefinition = patient_celery_executor.configured(celery_app_config(settings))
        hooks = {hand_over_hook}
        why = " Steps run on Celery workers, handing files over through file storage."
    else:
        # In-process executor: the steps run one after another in the run's own process, so the
        # embedding model is loaded once per run and no step pays a process start-up (~5 s with
        # torch). The stages are strictly sequential anyway, so there is no parallelism to lose.
        executor, hooks, why = dg.in_process_executor, set(), ""
    return dg.define_asset_job(
        name=JOB_NAME,
        selection=dg.AssetSelection.groups("ingest"),
        partitions_def=experts,
        executor_def=executor,
        hooks=hooks or None,
        # A retried run (see run_retries in dagster.yaml) redoes every step: the stages hand data
        # over through the run's work area, which a retry on another machine would not have.
        tags={"dagster/retry_strategy": "ALL_STEPS"},
        description="Ingest one expert (one partition): fetch, extract, chunk, embed, store vectors." + why,
    )


# Built from the environment when the code location loads; the sensors target this object.
ingest_job = build_ingest_job(get_settings())
