"""Signed webhooks for finished experts, through a transactional outbox (no Dagster import).

When an expert's progress reaches `completed`, `failed` or `cancelled`, the progress service
calls `enqueue_finished` in the same transaction as the terminal state: one `pending` row per
URL of `WEBHOOK_URLS` in `webhook_deliveries`, all sharing one `event_id`. The terminal state
and its webhook rows therefore commit (or roll back) together, and nothing is lost if a
process dies. `deliver_due` (run by the Dagster sensor `webhook_delivery_sensor`) sends the
rows that are due and records every attempt on the row (`attempts`, `last_status_code`,
`last_error`).

Request::

    POST <url>
    Content-Type: application/json
    X-Expert-Pipeline-Event: expert.completed            (or expert.failed / expert.cancelled)
    X-Expert-Pipeline-Delivery: <delivery id>            (new for every attempt: [A-Za-z0-9_-]{1,128})
    X-Expert-Pipeline-Signature: t=<unix ts>,v1=<hex>    (only when WEBHOOK_SECRET is set)

    {"event_id": "...", "type": "expert.completed", "created_at": "2026-...Z",
     "expert_id": "...", "progress": {<the specification's progress fields>}}

`v1` is hex(HMAC-SHA256(WEBHOOK_SECRET, f"{t}.{delivery id}.{raw body}")): the signature covers
the time, the delivery id and the body, so none of them can be swapped. Receivers call
`verify_webhook` with a `ReplayGuard` (or do the same in their language): it rejects a bad
signature, a `t` more than `tolerance_seconds` from now, and a delivery id already accepted
within that window, so a captured request cannot be replayed, neither later (stale `t`) nor at
once (remembered id). `event_id` (in the signed body, the same for every URL and every retry)
is what a receiver de-duplicates on: a retry is a new delivery of the same event.
Without `WEBHOOK_SECRET` requests are sent UNSIGNED (no signature header): receivers then
cannot tell our requests from anyone else's, so set a secret in production.

Email: when SMTP_URL is set, `enqueue_finished` also adds one row with url `mailto:<address>`
for a completed or failed expert whose owner has an email on their most recent non-revoked API
token; `deliver_due` sends it with smtplib, with the same claims, retries and backoff.

Delivery is at-least-once: a 2xx answer marks the row `delivered`; anything else (non-2xx,
timeout, connection error; redirects are not followed) is retried with exponential backoff and
jitter (about 2^attempts seconds, capped at one hour) until `WEBHOOK_MAX_ATTEMPTS`, then the
row is `failed`. A worker that dies after sending but before recording the answer causes one
resend, so receivers should de-duplicate on `event_id` + URL (mail carries a stable Message-ID).

Concurrency: a worker claims due rows in a short transaction (on PostgreSQL
`SELECT ... FOR UPDATE SKIP LOCKED`; on every backend a compare-and-set on `attempts`), moving
their `next_attempt_at` forward by a lease, and commits before any HTTP request. So two
workers never send one row at the same time, and no database lock is held while waiting on a
slow receiver. The result is written back only if the row still carries that claim.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import random
import re
import smtplib
import ssl
import threading
import time
import unicodedata
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import formatdate
from typing import Any

import httpx
from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session, sessionmaker

from expert_pipeline.core.models import (
    ApiToken,
    Expert,
    ExpertProcessingProgress,
    Status,
    WebhookDelivery,
    WebhookDeliveryStatus,
    utcnow,
)
from expert_pipeline.core.progress_public import present
from expert_pipeline.core.settings import Settings, get_settings

log = logging.getLogger("expert_pipeline.webhooks")

SIGNATURE_HEADER = "X-Expert-Pipeline-Signature"
EVENT_HEADER = "X-Expert-Pipeline-Event"
DELIVERY_HEADER = "X-Expert-Pipeline-Delivery"
USER_AGENT = "expert-pipeline-webhooks/1"

EVENT_TYPES: dict[str, str] = {
    Status.COMPLETED: "expert.completed",
    Status.FAILED: "expert.failed",
    Status.CANCELLED: "expert.cancelled",
}

MAX_BACKOFF_SECONDS = 3600.0
DEFAULT_TOLERANCE_SECONDS = 300
_ERROR_LIMIT = 1000
_BODY_SNIPPET_BYTES = 300
_CLAIM_ROUNDS = 3


# -- payload -----------------------------------------------------------------------------------


def isoformat_utc(value: datetime | None) -> str | None:
    """ISO 8601 in UTC with a `Z`, as the specification writes times (and the API sends them)."""
    if value is None:
        return None
    if value.tzinfo is None:
        raise ValueError("naive datetimes are ambiguous; pass a timezone-aware value")
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def progress_payload(record: ExpertProcessingProgress, settings: Settings | None = None) -> dict[str, Any]:
    """The record as the specification's progress JSON, presented as the API presents it."""
    return present(record, settings or get_settings()).spec_json()


def event_type_for(status: str) -> str:
    try:
        return EVENT_TYPES[Status(status)]
    except (KeyError, ValueError):
        raise ValueError(
            f"no webhook event for status '{status}' (only completed, failed, cancelled)"
        ) from None


def build_event(
    record: ExpertProcessingProgress,
    *,
    event_id: str | None = None,
    created_at: datetime | None = None,
    settings: Settings | None = None,
) -> dict[str, Any]:
    return {
        "event_id": event_id or str(uuid.uuid4()),
        "type": event_type_for(record.status),
        "created_at": isoformat_utc(created_at or utcnow()),
        "expert_id": record.expert_id,
        "progress": progress_payload(record, settings),
    }


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
            event_id=event["event_id"], expert_id=record.expert_id, event_type=event["type"], url=url,
            payload=payload, status=WebhookDeliveryStatus.PENDING, attempts=0, next_attempt_at=now,
            created_at=now,
        )

    # A URL listed twice gets one delivery.
    rows = [row(url, event) for url in dict.fromkeys(settings.webhook_urls)]
    if mail:
        message = notification_mail(session, record, event)
        if message is not None:
            rows.append(row(MAILTO + message["to"], message))
    session.add_all(rows)


# -- email -------------------------------------------------------------------------------------


MAILTO = "mailto:"
MAIL_STATUSES: frozenset[str] = frozenset({Status.COMPLETED, Status.FAILED})
_MAIL_ERROR_CHARS = 2000
_SUBJECT_ERROR_CHARS = 120


def owner_email(session: Session, owner: str | None) -> str | None:
    """The email on the owner's most recent non-revoked API token that has one, or None."""
    if not owner:
        return None
    return session.scalar(
        select(ApiToken.email)
        .where(
            ApiToken.owner == owner,
            ApiToken.revoked_at.is_(None),
            ApiToken.email.is_not(None),
            ApiToken.email != "",
        )
        .order_by(ApiToken.created_at.desc(), ApiToken.id.desc())
        .limit(1)
    )


def _one_line(text: str, limit: int) -> str:
    # Control, format (bidi) and line-break characters become spaces: mail headers must be one line.
    cleaned = "".join(" " if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") else c for c in text)
    cleaned = " ".join(cleaned.split())
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 1] + "…"


def notification_mail(
    session: Session, record: ExpertProcessingProgress, event: Mapping[str, Any]
) -> dict[str, Any] | None:
    """The mail for a finished expert, as an outbox payload; None if there is no one to tell.

    Plain words for the owner: no storage keys, no settings, no secrets; the error is the one the
    progress row shows.
    """
    if record.status not in MAIL_STATUSES:
        return None
    expert = session.get(Expert, record.expert_id)
    if expert is None:
        return None
    to = owner_email(session, expert.owner)
    if not to:
        return None
    name = _one_line(expert.name, 200)
    if record.status == Status.COMPLETED:
        indexed, failed = record.processed_files, record.failed_files
        files = f"{indexed} file{'' if indexed == 1 else 's'} indexed"
        if failed:
            files += f", {failed} could not be read"
        subject = f'Your expert "{name}" is ready'
        summary = f'Your expert "{name}" is ready ({files}). You can chat with it now.'
    else:
        error = (record.error_message or "").strip() or "no reason was recorded"
        subject = f'Your expert "{name}" failed: {_one_line(error, _SUBJECT_ERROR_CHARS)}'
        shown = error if len(error) <= _MAIL_ERROR_CHARS else error[: _MAIL_ERROR_CHARS - 1] + "…"
        summary = f'Your expert "{name}" failed: {shown}'
    finished = record.completed_at or utcnow()
    text = (
        f"Hello {_one_line(expert.owner or '', 200)},\n\n{summary}\n\n"
        f"Expert: {name} ({expert.id})\n"
        f"Finished: {finished.astimezone(UTC).strftime('%Y-%m-%d %H:%M UTC')}\n\n"
        "-- \nExpert Pipeline\n"
    )
    return {
        "event_id": event["event_id"], "type": event["type"], "created_at": event["created_at"],
        "expert_id": record.expert_id, "to": to, "subject": subject, "text": text,
    }


def build_mail(settings: Settings, claim_id: int, payload: Mapping[str, Any]) -> EmailMessage:
    """The message for an outbox mail row; its Message-ID is stable, so a resend can be recognised."""
    sender = settings.notify_email_from or ""
    message = EmailMessage()
    message["From"] = sender
    message["To"] = str(payload["to"])
    message["Subject"] = _one_line(str(payload["subject"]), 400)
    message["Date"] = formatdate(usegmt=True)
    domain = sender.rpartition("@")[2] or "expert-pipeline.invalid"
    message["Message-ID"] = f"<{payload['event_id']}.{claim_id}@{domain}>"
    message["Auto-Submitted"] = "auto-generated"  # RFC 3834: no auto-replies to notifications
    message.set_content(str(payload["text"]))
    return message


def _smtp_code(exc: BaseException) -> int | None:
    if isinstance(exc, smtplib.SMTPResponseException):
        return int(exc.smtp_code)
    if isinstance(exc, smtplib.SMTPRecipientsRefused) and exc.recipients:
        return int(next(iter(exc.recipients.values()))[0])
    return None


def _smtp_error(exc: BaseException) -> str:
    # Server replies and connection errors only: the URL (and its password) is never part of it.
    if isinstance(exc, smtplib.SMTPResponseException):
        reply = exc.smtp_error.decode("utf-8", "replace") if isinstance(exc.smtp_error, bytes) else str(exc.smtp_error)
        return f"SMTP {exc.smtp_code}: {reply}"
    if isinstance(exc, smtplib.SMTPRecipientsRefused) and exc.recipients:
        code, reply = next(iter(exc.recipients.values()))
        return f"SMTP {code}: recipient refused: {reply.decode('utf-8', 'replace')}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def send_mail(settings: Settings, message: EmailMessage) -> None:
    """Send one message through SMTP_URL with smtplib (TLS or STARTTLS as the URL says)."""
    server = settings.smtp_server
    if server is None:
        raise RuntimeError("SMTP_URL is not set: email notifications are off")
    timeout = settings.webhook_timeout_seconds
    context = ssl.create_default_context()
    smtp: smtplib.SMTP
    if server.security == "tls":
        smtp = smtplib.SMTP_SSL(server.host, server.port, timeout=timeout, context=context)
    else:
        smtp = smtplib.SMTP(server.host, server.port, timeout=timeout)
    with smtp:
        if server.security == "starttls":
            smtp.starttls(context=context)
        if server.username:
            smtp.login(server.username, server.password or "")
        smtp.send_message(message)


# -- signing -----------------------------------------------------------------------------------


def encode_body(payload: Mapping[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


_DELIVERY_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")


def new_delivery_id() -> str:
    """A fresh id for one delivery attempt (no dots, so "<t>.<id>.<body>" splits one way only)."""
    return uuid.uuid4().hex


def _digest(secret: str, timestamp: int, delivery_id: str, body: bytes) -> str:
    if not _DELIVERY_ID.fullmatch(delivery_id):
        raise ValueError(f"invalid delivery id {delivery_id!r}")
    message = f"{timestamp}.{delivery_id}.".encode() + body
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, timestamp: int | None = None, *, delivery_id: str) -> str:
    """The `X-Expert-Pipeline-Signature` value: `t=<unix ts>,v1=<hex hmac of "t.delivery_id.body">`."""
    ts = int(time.time()) if timestamp is None else int(timestamp)
    return f"t={ts},v1={_digest(secret, ts, delivery_id, body)}"


def _parse_signature(header: str) -> tuple[int, list[str]] | None:
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            return None
        if key == "t":
            try:
                timestamp = int(value)
            except ValueError:
                return None
        elif key == "v1":
            candidates.append(value)
    if timestamp is None or not candidates:
        return None
    return timestamp, candidates


def _seconds(now: float | datetime | None) -> float:
    return time.time() if now is None else (now.timestamp() if isinstance(now, datetime) else float(now))


def verify_signature(
    secret: str,
    body: bytes,
    header: str,
    tolerance_seconds: float = DEFAULT_TOLERANCE_SECONDS,
    now: float | datetime | None = None,
    *,
    delivery_id: str,
) -> bool:
    """True only if `header` signs exactly this delivery id and body with `secret`, recently.

    Rejects a malformed header or delivery id, an empty secret, a timestamp further than
    `tolerance_seconds` from `now` (in either direction: replays and clock tricks), and any
    other signature. Several `v1=` entries are accepted (one must match), for secret rotation
    by the sender. It does not remember delivery ids: `verify_webhook` with a `ReplayGuard` does.
    """
    if not secret or not header or not _DELIVERY_ID.fullmatch(delivery_id or ""):
        return False
    parsed = _parse_signature(header)
    if parsed is None:
        return False
    timestamp, candidates = parsed
    if abs(_seconds(now) - timestamp) > tolerance_seconds:
        return False
    expected = _digest(secret, timestamp, delivery_id, body)
    # No early exit: compare every candidate, each in constant time.
    matched = False
    for candidate in candidates:
        matched |= hmac.compare_digest(expected.encode(), candidate.encode())
    return matched


class WebhookRejected(ValueError):
    """A received webhook that must not be acted on; `reason` is a short code for the receiver's log."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason  # "unsigned", "malformed", "bad_signature", "stale", "replayed"


class ReplayGuard:
    """The delivery ids a receiver has accepted, each kept until its `t` leaves the tolerance window.

    After that a replay is refused by its stale `t` anyway, so memory stays bounded by the
    deliveries of one window. In memory, for one process; a receiver running several processes
    keeps the same (id, expiry) pairs in a shared store (e.g. a unique key with a TTL).
    """

    def __init__(self) -> None:
        self._expiry: dict[str, float] = {}  # delivery id -> forget after (unix seconds)
        self._lock = threading.Lock()

    def first_time(self, delivery_id: str, forget_after: float, now: float) -> bool:
        """Remember `delivery_id`; False if it was already remembered (a replay)."""
        with self._lock:
            for seen in [k for k, until in self._expiry.items() if until < now]:
                del self._expiry[seen]
            if delivery_id in self._expiry:
                return False
            self._expiry[delivery_id] = forget_after
            return True

    def __len__(self) -> int:
        with self._lock:
            return len(self._expiry)


@dataclass(frozen=True)
class VerifiedWebhook:
    delivery_id: str
    timestamp: int
    event: dict[str, Any]  # the parsed body; de-duplicate on event["event_id"]


def verify_webhook(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    replay_guard: ReplayGuard | None,
    *,
    tolerance_seconds: float = DEFAULT_TOLERANCE_SECONDS,
    now: float | datetime | None = None,
) -> VerifiedWebhook:
    """Check a received request end to end, for receivers and tests; raise `WebhookRejected`.

    Order: signature (over t, delivery id and body) and time window first, and only then is the
    delivery id remembered, so forged requests can never fill or poison the guard. Pass a
    `ReplayGuard` to refuse a delivery id seen before (None skips that check: not recommended).
    """
    lowered = {key.lower(): value for key, value in headers.items()}
    header = lowered.get(SIGNATURE_HEADER.lower(), "")
    delivery_id = lowered.get(DELIVERY_HEADER.lower(), "")
    if not header:
        raise WebhookRejected("unsigned", f"no {SIGNATURE_HEADER} header")
    parsed = _parse_signature(header)
    if parsed is None or not _DELIVERY_ID.fullmatch(delivery_id):
        raise WebhookRejected("malformed", f"malformed {SIGNATURE_HEADER} or {DELIVERY_HEADER} header")
    current = _seconds(now)
    timestamp = parsed[0]
    # Signature before time: a forged request learns nothing about the window.
    if not verify_signature(secret, body, header, tolerance_seconds=float("inf"), now=current,
                            delivery_id=delivery_id):
        raise WebhookRejected("bad_signature", "the signature does not match this body and delivery id")
    if abs(current - timestamp) > tolerance_seconds:
        raise WebhookRejected("stale", f"signed {current - timestamp:.0f} s from now, outside ±{tolerance_seconds:g} s")
    if replay_guard is not None and not replay_guard.first_time(delivery_id, timestamp + tolerance_seconds, current):
        raise WebhookRejected("replayed", f"delivery {delivery_id} was already received")
    try:
        event = json.loads(body)
    except ValueError:
        raise WebhookRejected("malformed", "the body is not JSON") from None
    if not isinstance(event, dict):
        raise WebhookRejected("malformed", "the body is not a JSON object")
    return VerifiedWebhook(delivery_id=delivery_id, timestamp=timestamp, event=event)


# -- delivery ----------------------------------------------------------------------------------


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
class _Claim:
    id: int
    event_id: str
    event_type: str
    url: str
    payload: dict[str, Any]
    attempt: int  # the value of `attempts` this claim set: its fencing token


@dataclass(frozen=True)
class _Outcome:
    claim: _Claim
    ok: bool
    status_code: int | None
    error: str | None


def _factory(bind: Engine | sessionmaker[Session]) -> sessionmaker[Session]:
    if isinstance(bind, sessionmaker):
        return bind
    return sessionmaker(bind, expire_on_commit=False)


def _claim_due(
    factory: sessionmaker[Session], settings: Settings, now: datetime, limit: int, max_workers: int,
    report: DeliveryReport,
) -> list[_Claim]:
    # Long enough for a whole batch to be sent before another worker may take one of its rows.
    rounds = math.ceil(limit / max(max_workers, 1))
    lease = now + timedelta(seconds=60 + 3 * settings.webhook_timeout_seconds * rounds)
    claims: list[_Claim] = []
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
                    result = session.execute(
                        update(WebhookDelivery).where(*guard).values(
                            status=WebhookDeliveryStatus.FAILED,
                            last_error=(row.last_error or "no answer recorded for the last attempt"),
                        ).execution_options(synchronize_session=False)
                    )
                    report.failed += result.rowcount
                    continue
                # Compare-and-set on `attempts`: on SQLite (no row locks) this is what makes the claim
                # exclusive; on PostgreSQL the row lock already does, and this always succeeds.
                result = session.execute(
                    update(WebhookDelivery).where(*guard)
                    .values(attempts=row.attempts + 1, next_attempt_at=lease)
                    .execution_options(synchronize_session=False)
                )
                if result.rowcount == 1:
                    claims.append(_Claim(
                        row.id, row.event_id, row.event_type, row.url, dict(row.payload), row.attempts + 1
                    ))
                else:
                    lost = True  # another worker claimed it first; look for other due rows
            if not lost or len(claims) >= limit:
                break
        session.commit()
    report.claimed += len(claims)
    return claims


def _headers(settings: Settings, claim: _Claim, body: bytes) -> dict[str, str]:
    # A new delivery id per attempt: a receiver that remembers ids refuses only true replays.
    delivery_id = new_delivery_id()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        EVENT_HEADER: claim.event_type,
        DELIVERY_HEADER: delivery_id,
    }
    if settings.webhook_secret:
        # Signed at send time (wall clock), so the receiver's replay window starts now.
        headers[SIGNATURE_HEADER] = sign(settings.webhook_secret, body, delivery_id=delivery_id)
    return headers


def _short(text: str) -> str:
    return text if len(text) <= _ERROR_LIMIT else text[: _ERROR_LIMIT - 1] + "…"


def _send_mail(settings: Settings, claim: _Claim) -> _Outcome:
    try:
        send_mail(settings, build_mail(settings, claim.id, claim.payload))
    except Exception as exc:  # noqa: BLE001 - any failure of one attempt is recorded on its row
        return _Outcome(claim, False, _smtp_code(exc), _short(_smtp_error(exc)))
    return _Outcome(claim, True, 250, None)


def _send(client: httpx.Client, settings: Settings, claim: _Claim) -> _Outcome:
    if claim.url.startswith(MAILTO):
        return _send_mail(settings, claim)
    body = encode_body(claim.payload)
    try:
        with client.stream(
            "POST", claim.url, content=body, headers=_headers(settings, claim, body),
            timeout=settings.webhook_timeout_seconds,
        ) as response:
            code = response.status_code
            if 200 <= code < 300:
                return _Outcome(claim, True, code, None)
            snippet = b""
            for chunk in response.iter_bytes():
                snippet += chunk
                if len(snippet) >= _BODY_SNIPPET_BYTES:
                    break
            text = snippet[:_BODY_SNIPPET_BYTES].decode("utf-8", "replace").strip()
            reason = response.reason_phrase or ""
            error = f"HTTP {code} {reason}".strip() + (f": {text}" if text else "")
            return _Outcome(claim, False, code, _short(error))
    except Exception as exc:  # noqa: BLE001 - any failure of one request is recorded on its row
        message = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return _Outcome(claim, False, None, _short(message))


def _record(
    factory: sessionmaker[Session],
    settings: Settings,
    outcome: _Outcome,
    now: datetime,
    report: DeliveryReport,
) -> None:
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
        result = session.execute(
            update(WebhookDelivery)
            .where(
                WebhookDelivery.id == claim.id,
                WebhookDelivery.status == WebhookDeliveryStatus.PENDING,
                WebhookDelivery.attempts == claim.attempt,
            )
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        session.commit()
    if result.rowcount != 1:
        report.lost_claim += 1
        log.warning(
            "webhook %s to %s: claim expired before the answer was recorded", claim.event_id, claim.url
        )
        return
    setattr(report, counter, getattr(report, counter) + 1)
    if counter == "delivered":
        log.info(
            "webhook %s %s delivered to %s (attempt %d)",
            claim.event_type, claim.event_id, claim.url, claim.attempt,
        )
    else:
        log.warning(
            "webhook %s %s to %s, attempt %d/%d: %s%s", claim.event_type, claim.event_id, claim.url,
            claim.attempt, settings.webhook_max_attempts, outcome.error,
            " - giving up" if counter == "failed" else "",
        )


def deliver_due(
    bind: Engine | sessionmaker[Session],
    settings: Settings | None = None,
    *,
    now: datetime | None = None,
    limit: int = 50,
    client: httpx.Client | None = None,
    max_workers: int = 8,
) -> DeliveryReport:
    """Send up to `limit` pending deliveries whose `next_attempt_at` has come; record each try.

    `bind` is an Engine or a sessionmaker. `now` (default: the current time) decides what is
    due and is the base for the next retry time; signatures always use the wall clock.
    Requests go out in parallel (`max_workers`), each with `WEBHOOK_TIMEOUT_SECONDS`.
    """
    settings = settings or get_settings()
    clock: Callable[[], datetime] = (lambda: now) if now is not None else utcnow
    factory = _factory(bind)
    report = DeliveryReport()
    claims = _claim_due(factory, settings, clock(), limit, max_workers, report)
    if not claims:
        return report
    own_client = client is None
    http = client or httpx.Client(timeout=settings.webhook_timeout_seconds, follow_redirects=False)
    try:
        workers = min(max_workers, len(claims))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="webhook") as pool:
            futures = [pool.submit(_send, http, settings, claim) for claim in claims]
            for future in as_completed(futures):
                _record(factory, settings, future.result(), clock(), report)
    finally:
        if own_client:
            http.close()
    return report
