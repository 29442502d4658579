"""What the owner is told by mail when their expert completes or fails.

When SMTP_URL is set, `outbox.enqueue_finished` adds one row with url `mailto:<address>` for a
completed or failed expert whose owner has an email on their most recent non-revoked API token;
its payload is `notification_mail`, and `delivery` sends it as `build_mail` writes it, with the
same claims, retries and backoff as webhooks. The Message-ID is stable, so a resend can be recognised.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from datetime import UTC
from email.message import EmailMessage
from email.utils import formatdate
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from expert_pipeline.core.models import ApiToken, Expert, ExpertProcessingProgress, Status, utcnow
from expert_pipeline.core.settings import Settings

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


def one_line(text: str, limit: int) -> str:
    """`text` fit for a mail header: one line of at most `limit` characters."""
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
    name = one_line(expert.name, 200)
    if record.status == Status.COMPLETED:
        indexed, failed = record.processed_files, record.failed_files
        files = f"{indexed} file{'' if indexed == 1 else 's'} indexed"
        if failed:
            files += f", {failed} could not be read"
        subject = f'Your expert "{name}" is ready'
        summary = f'Your expert "{name}" is ready ({files}). You can chat with it now.'
    else:
        error = (record.error_message or "").strip() or "no reason was recorded"
        subject = f'Your expert "{name}" failed: {one_line(error, _SUBJECT_ERROR_CHARS)}'
        shown = error if len(error) <= _MAIL_ERROR_CHARS else error[: _MAIL_ERROR_CHARS - 1] + "…"
        summary = f'Your expert "{name}" failed: {shown}'
    finished = record.completed_at or utcnow()
    text = (
        f"Hello {one_line(expert.owner or '', 200)},\n\n{summary}\n\n"
        f"Expert: {name} ({expert.id})\n"
        f"Finished: {finished.astimezone(UTC).strftime('%Y-%m-%d %H:%M UTC')}\n\n"
        "-- \nExpert Pipeline\n"
    )
    return {
        "event_id": event["event_id"],
        "type": event["type"],
        "created_at": event["created_at"],
        "expert_id": record.expert_id,
        "to": to,
        "subject": subject,
        "text": text,
    }


def build_mail(settings: Settings, claim_id: int, payload: Mapping[str, Any]) -> EmailMessage:
    """The message for an outbox mail row; its Message-ID is stable, so a resend can be recognised."""
    sender = settings.notify_email_from or ""
    message = EmailMessage()
    message["From"] = sender
    message["To"] = str(payload["to"])
    message["Subject"] = one_line(str(payload["subject"]), 400)
    message["Date"] = formatdate(usegmt=True)
    domain = sender.rpartition("@")[2] or "expert-pipeline.invalid"
    message["Message-ID"] = f"<{payload['event_id']}.{claim_id}@{domain}>"
    message["Auto-Submitted"] = "auto-generated"  # RFC 3834: no auto-replies to notifications
    message.set_content(str(payload["text"]))
    return message
