"""Sends due webhook deliveries and notification mail from the outbox (expert_pipeline/core/notifications/).

Starts no runs. Mail rows (url `mailto:...`) go out through SMTP_URL with the same retries.

No `from __future__ import annotations` here: Dagster inspects the sensor's type hints.
"""

import time

import dagster as dg

from expert_pipeline.core.notifications.delivery import deliver_due
from expert_pipeline.core.notifications.outbox import DeliveryReport
from expert_pipeline.core.settings import get_settings
from expert_pipeline.resources.expert_catalog import ExpertCatalog

# One tick sends batches while rows are due, but starts no new batch after this budget, so a
# tick stays well inside Dagster's sensor evaluation timeout (60 s) even with slow receivers.
BATCH_SIZE = 16
TICK_BUDGET_SECONDS = 20.0


@dg.sensor(
    minimum_interval_seconds=5,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "Sends the signed webhooks (expert.completed / expert.failed / expert.cancelled) and the owners' "
        "completion/failure mail that are due, retrying with backoff; every attempt is recorded in "
        "webhook_deliveries."
    ),
)
def webhook_delivery_sensor(context: dg.SensorEvaluationContext, catalog: ExpertCatalog) -> dg.SkipReason:
    # WEBHOOK_SECRET and SMTP_URL are read from the environment here, never put in resource config (the UI).
    settings = get_settings()
    total = DeliveryReport()
    deadline = time.monotonic() + TICK_BUDGET_SECONDS
    while True:
        report = deliver_due(catalog.engine, settings, limit=BATCH_SIZE)
        total.add(report)
        if report.claimed < BATCH_SIZE or time.monotonic() >= deadline:
            break
    if total.claimed or total.failed:
        context.log.info(total.summary())
    return dg.SkipReason(total.summary())
