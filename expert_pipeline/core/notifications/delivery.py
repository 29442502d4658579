"""Sending claimed outbox rows: webhooks as signed HTTP POSTs (httpx), mail through SMTP_URL (smtplib).

A 2xx answer (or SMTP accepting the message) is a success; anything else (non-2xx, timeout,
connection error; redirects are not followed) is recorded on the row and retried (`outbox`).
"""

from __future__ import annotations

import smtplib
import ssl
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from datetime import datetime
from email.message import EmailMessage

import httpx
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from expert_pipeline.core.models import utcnow
from expert_pipeline.core.notifications.mail import MAILTO, build_mail
from expert_pipeline.core.notifications.outbox import (
    Claim,
    DeliveryReport,
    Outcome,
    claim_due,
    record_outcome,
    session_factory,
    short_error,
)
from expert_pipeline.core.notifications.payload import encode_body
from expert_pipeline.core.notifications.signing import (
    DELIVERY_HEADER,
    SIGNATURE_HEADER,
    new_delivery_id,
    sign,
)
from expert_pipeline.core.settings import Settings, get_settings

EVENT_HEADER = "X-Expert-Pipeline-Event"
USER_AGENT = "expert-pipeline-webhooks/1"
_BODY_SNIPPET_BYTES = 300


def _smtp_code(exc: BaseException) -> int | None:
    if isinstance(exc, smtplib.SMTPResponseException):
        return int(exc.smtp_code)
    if isinstance(exc, smtplib.SMTPRecipientsRefused) and exc.recipients:
        return int(next(iter(exc.recipients.values()))[0])
    return None


def _smtp_error(exc: BaseException) -> str:
    # Server replies and connection errors only: the URL (and its password) is never part of it.
    if isinstance(exc, smtplib.SMTPResponseException):
        reply = (
            exc.smtp_error.decode("utf-8", "replace")
            if isinstance(exc.smtp_error, bytes)
            else str(exc.smtp_error)
        )
        return f"SMTP {exc.smtp_code}: {reply}"
    if isinstance(exc, smtplib.SMTPRecipientsRefused) and exc.recipients:
        code, refusal = next(iter(exc.recipients.values()))
        return f"SMTP {code}: recipient refused: {refusal.decode('utf-8', 'replace')}"
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


def _headers(settings: Settings, claim: Claim, body: bytes) -> dict[str, str]:
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


def _send_mail(settings: Settings, claim: Claim) -> Outcome:
    try:
        send_mail(settings, build_mail(settings, claim.id, claim.payload))
    except Exception as exc:  # noqa: BLE001 - any failure of one attempt is recorded on its row
        return Outcome(claim, False, _smtp_code(exc), short_error(_smtp_error(exc)))
    return Outcome(claim, True, 250, None)


def _send(client: httpx.Client, settings: Settings, claim: Claim) -> Outcome:
    if claim.url.startswith(MAILTO):
        return _send_mail(settings, claim)
    body = encode_body(claim.payload)
    try:
        with client.stream(
            "POST",
            claim.url,
            content=body,
            headers=_headers(settings, claim, body),
            timeout=settings.webhook_timeout_seconds,
        ) as response:
            code = response.status_code
            if 200 <= code < 300:
                return Outcome(claim, True, code, None)
            snippet = b""
            for chunk in response.iter_bytes():
                snippet += chunk
                if len(snippet) >= _BODY_SNIPPET_BYTES:
                    break
            text = snippet[:_BODY_SNIPPET_BYTES].decode("utf-8", "replace").strip()
            reason = response.reason_phrase or ""
            error = f"HTTP {code} {reason}".strip() + (f": {text}" if text else "")
            return Outcome(claim, False, code, short_error(error))
    except Exception as exc:  # noqa: BLE001 - any failure of one request is recorded on its row
        message = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return Outcome(claim, False, None, short_error(message))


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
    factory = session_factory(bind)
    report = DeliveryReport()
    claims = claim_due(factory, settings, clock(), limit, max_workers, report)
    if not claims:
        return report
    own_client = client is None
    http = client or httpx.Client(timeout=settings.webhook_timeout_seconds, follow_redirects=False)
    try:
        workers = min(max_workers, len(claims))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="webhook") as pool:
            futures = [pool.submit(_send, http, settings, claim) for claim in claims]
            for future in as_completed(futures):
                record_outcome(factory, settings, future.result(), clock(), report)
    finally:
        if own_client:
            http.close()
    return report
