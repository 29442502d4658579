"""The outbox: one `webhook_deliveries` row per notification, written in the terminal state's
transaction, claimed by a sender, and updated with every attempt's answer.

`enqueue_finished` adds one `pending` row per URL of `WEBHOOK_URLS` (and one `mailto:` row, see
`mail`), all sharing one `event_id`. Each attempt is recorded on its row (`attempts`,
`last_status_code`, `last_error`). Delivery is at-least-once: a success marks the row
`delivered`; a failure is retried with exponential backoff and jitter (about 2^attempts seconds,
capped at one hour) until `WEBHOOK_MAX_ATTEMPTS`, then the row is `failed`. A worker that dies
after sending but before recording the answer causes one resend, so receivers should
de-duplicate on `event_id` + URL. Finished rows are pruned by the daily cleanup (core/maintenance.py).

Concurrency: a worker claims due rows in a short transaction (on PostgreSQL
`SELECT ... FOR UPDATE SKIP LOCKED`; on every backend a compare-and-set on `attempts`), moving
their `next_attempt_at` forward by a lease, and commits before any request is sent. So two
workers never send one row at the same time, and no database lock is held while waiting on a
slow receiver. The answer is written back only if the row still carries that claim.
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session, sessionmaker

from expert_pipeline.core.db import rows_affected
from expert_pipeline.core.models import (
    ExpertProcessingProgress,
    WebhookDelivery,
    WebhookDeliveryStatus,
    utcnow,
)
from expert_pipeline.core.notifications.mail import MAIL_STATUSES, MAILTO, notification_mail
from expert_pipeline.core.notifications.payload import build_event
from expert_pipeline.core.settings import Settings, get_settings

log = logging.getLogger(__name__)

MAX_BACKOFF_SECONDS = 3600.0
_ERROR_LIMIT = 1000
_CLAIM_ROUNDS = 3


def enqueue_finished(
    session: Session, record: ExpertProcessingProgress, settings: Settings | None = None
) -> None:
    """Add one pending delivery per configured URL (and the owner's mail) to the caller's transaction.

    Call it right after setting the terminal status and before the commit that records it (no
    commit here). Does nothing (and touches no database) when neither WEBHOOK_URLS nor SMTP_URL
    is configured.
    """
    settings = settings or get_settings()
    mail = settings.smtp_url is not None and record.status in MAIL_STATUSES
    if not settings.webhook_urls and not mail:
        return
    now = utcnow()
    event = build_event(record, created_at=now, settings=settings)

    def row(url: str, payload: dict[str, Any]) -> WebhookDelivery:
        return WebhookDelivery(
            event_id=event["event_id"],
            expert_id=record.expert_id,
            event_type=event["type"],
            url=url,
            payload=payload,
            status=WebhookDeliveryStatus.PENDING,
            attempts=0,
            next_attempt_at=now,
            created_at=now,
        )

    # A URL listed twice gets one delivery.
    rows = [row(url, event) for url in dict.fromkeys(settings.webhook_urls)]
    if mail:
        message = notification_mail(session, record, event)
        if message is not None:
            rows.append(row(MAILTO + message["to"], message))
    session.add_all(rows)


def backoff_seconds(attempts: int, rng: random.Random | None = None) -> float:
    """Delay before the next try after `attempts` failed ones: 2^attempts s (max 1 h), jittered.

    "Equal jitter": uniformly between half and all of the exponential step, so retries of
    many deliveries spread out but still grow.
    """
    step = min(MAX_BACKOFF_SECONDS, 2.0 ** min(max(attempts, 0), 32))
    return step / 2 + (rng or random).uniform(0, step / 2)


@dataclass
class DeliveryReport:
    claimed: int = 0  # rows this call took and attempted
    delivered: int = 0  # answered 2xx
    retrying: int = 0  # failed this time, scheduled for another attempt
    failed: int = 0  # gave up (max attempts reached)
    lost_claim: int = 0  # result not recorded: the claim expired and another worker took the row

    def add(self, other: DeliveryReport) -> None:
        for name in ("claimed", "delivered", "retrying", "failed", "lost_claim"):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def summary(self) -> str:
        if not (self.claimed or self.failed):
            return "No webhook deliveries due"
        text = f"Webhooks: {self.delivered} delivered, {self.retrying} to retry, {self.failed} failed"
        if self.lost_claim:
            text += f", {self.lost_claim} taken over by another worker"
        return text


@dataclass(frozen=True)
class Claim:
    """A row this worker may send now; only it may record the answer (while `attempts` is `attempt`)."""

    id: int
    event_id: str
    event_type: str
    url: str
    payload: dict[str, Any]
    attempt: int  # the value of `attempts` this claim set: its fencing token


@dataclass(frozen=True)
class Outcome:
    """The answer to one attempt, as recorded on the row."""

    claim: Claim
    ok: bool
    status_code: int | None
    error: str | None


def session_factory(bind: Engine | sessionmaker[Session]) -> sessionmaker[Session]:
    """Sessions for `bind` (an Engine, or a sessionmaker used as it is)."""
    if isinstance(bind, sessionmaker):
        return bind
    return sessionmaker(bind, expire_on_commit=False)


def claim_due(
    factory: sessionmaker[Session],
    settings: Settings,
    now: datetime,
    limit: int,
    max_workers: int,
    report: DeliveryReport,
) -> list[Claim]:
    """Take up to `limit` due rows for this worker (committed before anything is sent); rows whose
    last attempt was claimed but never recorded are failed when no attempt is left."""
    # Long enough for a whole batch to be sent before another worker may take one of its rows.
    rounds = math.ceil(limit / max(max_workers, 1))
    lease = now + timedelta(seconds=60 + 3 * settings.webhook_timeout_seconds * rounds)
    claims: list[Claim] = []
    with factory() as session:
        postgresql = session.get_bind().dialect.name == "postgresql"
        seen: set[int] = set()
        for _ in range(_CLAIM_ROUNDS):
            query = (
                select(WebhookDelivery)
                .where(
                    WebhookDelivery.status == WebhookDeliveryStatus.PENDING,
                    WebhookDelivery.next_attempt_at <= now,
                )
                .order_by(WebhookDelivery.next_attempt_at, WebhookDelivery.id)
                .limit(limit - len(claims))
            )
            if seen:
                query = query.where(WebhookDelivery.id.not_in(seen))
            if postgresql:
                # Rows another worker is claiming right now are skipped, not waited for.
                query = query.with_for_update(skip_locked=True)
            rows = list(session.scalars(query))
            lost = False
            for row in rows:
                seen.add(row.id)
                guard = (
                    WebhookDelivery.id == row.id,
                    WebhookDelivery.status == WebhookDeliveryStatus.PENDING,
                    WebhookDelivery.attempts == row.attempts,
                )
                if row.attempts >= settings.webhook_max_attempts:
                    # Its last attempt was claimed by a worker that stopped before recording the answer.
                    changed = rows_affected(
                        session,
                        update(WebhookDelivery)
                        .where(*guard)
                        .values(
                            status=WebhookDeliveryStatus.FAILED,
                            last_error=(row.last_error or "no answer recorded for the last attempt"),
                        )
                        .execution_options(synchronize_session=False),
                    )
                    report.failed += changed
                    continue
                # Compare-and-set on `attempts`: on SQLite (no row locks) this is what makes the claim
                # exclusive; on PostgreSQL the row lock already does, and this always succeeds.
                changed = rows_affected(
                    session,
                    update(WebhookDelivery)
                    .where(*guard)
                    .values(attempts=row.attempts + 1, next_attempt_at=lease)
                    .execution_options(synchronize_session=False),
                )
                if changed == 1:
                    claims.append(
                        Claim(
                            row.id, row.event_id, row.event_type, row.url, dict(row.payload), row.attempts + 1
                        )
                    )
                else:
                    lost = True  # another worker claimed it first; look for other due rows
            if not lost or len(claims) >= limit:
                break
        session.commit()
    report.claimed += len(claims)
    return claims


def short_error(text: str) -> str:
    """`text` cut to what a row keeps in `last_error`."""
    return text if len(text) <= _ERROR_LIMIT else text[: _ERROR_LIMIT - 1] + "…"


def record_outcome(
    factory: sessionmaker[Session],
    settings: Settings,
    outcome: Outcome,
    now: datetime,
    report: DeliveryReport,
) -> None:
    """Write the answer on the row if it still carries this claim: delivered, retry later, or failed."""
    claim = outcome.claim
    values: dict[str, Any] = {"last_status_code": outcome.status_code, "last_error": outcome.error}
    if outcome.ok:
        values |= {"status": WebhookDeliveryStatus.DELIVERED, "delivered_at": now}
        counter = "delivered"
    elif claim.attempt >= settings.webhook_max_attempts:
        values |= {"status": WebhookDeliveryStatus.FAILED}
        counter = "failed"
    else:
        values |= {"next_attempt_at": now + timedelta(seconds=backoff_seconds(claim.attempt))}
        counter = "retrying"
    with factory() as session:
        changed = rows_affected(
            session,
            update(WebhookDelivery)
            .where(
                WebhookDelivery.id == claim.id,
                WebhookDelivery.status == WebhookDeliveryStatus.PENDING,
                WebhookDelivery.attempts == claim.attempt,
            )
            .values(**values)
            .execution_options(synchronize_session=False),
        )
        session.commit()
    if changed != 1:
        report.lost_claim += 1
        log.warning(
            "webhook %s to %s: claim expired before the answer was recorded", claim.event_id, claim.url
        )
        return
    setattr(report, counter, getattr(report, counter) + 1)
    if counter == "delivered":
        log.info(
            "webhook %s %s delivered to %s (attempt %d)",
            claim.event_type,
            claim.event_id,
            claim.url,
            claim.attempt,
        )
    else:
        log.warning(
            "webhook %s %s to %s, attempt %d/%d: %s%s",
            claim.event_type,
            claim.event_id,
            claim.url,
            claim.attempt,
            settings.webhook_max_attempts,
            outcome.error,
            " - giving up" if counter == "failed" else "",
        )
