"""Completion and failure mail to the expert's owner, through the webhook outbox, to a real SMTP server.

The server is aiosmtpd on a local port (with AUTH, as a relay would have); mail goes through the
same rows, claims, retries and backoff as webhooks (`webhook_deliveries`, url `mailto:<address>`).
"""

from __future__ import annotations

import email
import email.policy
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from email.message import EmailMessage

import dagster as dg
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword
from aiosmtpd.smtp import Session as SmtpSession
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from expert_pipeline.automation.notifications import webhook_delivery_sensor
from expert_pipeline.core.models import ApiToken, Expert, WebhookDelivery, utcnow
from expert_pipeline.core.notifications.delivery import deliver_due
from expert_pipeline.core.progress_service import ExpertProcessingProgressService
from expert_pipeline.core.settings import Settings, get_settings
from expert_pipeline.resources.parts import build_resources
from tests.conftest import free_port

SMTP_USER, SMTP_PASSWORD = "mailer", "s3cret-pw"
SENDER = "Expert Pipeline <notify@pipeline.example>"


@dataclass(frozen=True)
class Mail:
    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage

    @property
    def text(self) -> str:
        body = self.message.get_body(("plain",))
        assert body is not None
        return body.get_content().replace("\r\n", "\n")  # as received: SMTP lines end in CRLF


class Mailbox:
    """aiosmtpd handler: keeps every accepted message; answers 451 to the next `refuse` DATA commands."""

    def __init__(self) -> None:
        self.mails: list[Mail] = []
        self.refuse = 0
        self.refused = 0
        self.logins: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    async def handle_DATA(self, server: SMTP, session: SmtpSession, envelope: Envelope) -> str:  # noqa: N802 - aiosmtpd's name
        with self._lock:
            if self.refuse:
                self.refuse -= 1
                self.refused += 1
                return "451 4.3.0 Mailbox busy, try again later"
            message = email.message_from_bytes(envelope.content, policy=email.policy.default)
            self.mails.append(Mail(str(envelope.mail_from), list(envelope.rcpt_tos), message))  # type: ignore[arg-type]
        return "250 2.0.0 OK: queued"

    def authenticate(self, server: SMTP, session: SmtpSession, envelope: Envelope, mechanism: str,
                     auth_data: object) -> AuthResult:
        if isinstance(auth_data, LoginPassword):
            login, password = auth_data.login.decode(), auth_data.password.decode()
            self.logins.append((login, password))
            if (login, password) == (SMTP_USER, SMTP_PASSWORD):
                return AuthResult(success=True)
        return AuthResult(success=False, handled=False)


@pytest.fixture
def mailbox() -> Iterator[tuple[Mailbox, int]]:
    box = Mailbox()
    port = free_port()
    controller = Controller(
        # AUTH offered over plain TCP (this server is on loopback); the test checks every login.
        box, hostname="127.0.0.1", port=port, authenticator=box.authenticate, auth_require_tls=False,
    )
    controller.start()
    try:
        yield box, port
    finally:
        controller.stop()


@pytest.fixture
def smtp_env(monkeypatch: pytest.MonkeyPatch, mailbox: tuple[Mailbox, int]) -> Iterator[Settings]:
    """SMTP_URL and NOTIFY_EMAIL_FROM in the environment, as a deployment sets them; no webhook URLs."""
    _, port = mailbox
    monkeypatch.delenv("WEBHOOK_URLS", raising=False)
    monkeypatch.setenv("SMTP_URL", f"smtp://{SMTP_USER}:{SMTP_PASSWORD}@127.0.0.1:{port}")
    monkeypatch.setenv("NOTIFY_EMAIL_FROM", SENDER)
    get_settings.cache_clear()
    yield get_settings()
    monkeypatch.undo()
    get_settings.cache_clear()


def _owner(db: Session, owner: str, tokens: list[tuple[str | None, bool]]) -> None:
    """API tokens for `owner`, oldest first: (email, revoked)."""
    start = utcnow() - timedelta(days=len(tokens))
    for n, (address, revoked) in enumerate(tokens):
        db.add(ApiToken(owner=owner, token_sha256=f"{owner}-{n}".ljust(64, "0"), email=address,
                        created_at=start + timedelta(days=n), revoked_at=utcnow() if revoked else None))
    db.commit()


def _expert(db: Session, name: str, owner: str | None) -> str:
    expert = Expert(name=name, owner=owner)
    db.add(expert)
    db.commit()
    return expert.id


def _rows(engine: Engine) -> list[WebhookDelivery]:
    with Session(engine) as session:
        return list(session.scalars(select(WebhookDelivery).order_by(WebhookDelivery.id)))


def test_completed_and_failed_experts_each_mail_their_owner_once(
    smtp_env: Settings, mailbox: tuple[Mailbox, int], db: Session, engine: Engine, settings: Settings
) -> None:
    box, _ = mailbox
    # The most recent non-revoked token with an email wins.
    _owner(db, "alice", [("old@alice.example", False), ("alice@alice.example", False),
                         ("stolen@evil.example", True), (None, False)])
    done = _expert(db, "Tax adviser", "alice")
    broken = _expert(db, "Broken one", "alice")
    stopped = _expert(db, "Stopped", "alice")
    service = ExpertProcessingProgressService(db)
    for expert_id in (done, broken, stopped):
        service.create_progress_record(expert_id=expert_id, total_files=2)
    service.update_progress(expert_id=done, processed_files=2)
    service.mark_completed(expert_id=done)
    service.mark_failed(expert_id=broken, error_message="None of the files could be read: scan.pdf (image only)")
    service.mark_cancelled(expert_id=stopped)  # a cancel is the user's own doing: no mail

    rows = _rows(engine)
    assert sorted((r.expert_id, r.event_type, r.url) for r in rows) == sorted([
        (done, "expert.completed", "mailto:alice@alice.example"),
        (broken, "expert.failed", "mailto:alice@alice.example"),
    ])

    # Delivered by the same sensor as webhooks, with SMTP_URL read from the environment.
    result = webhook_delivery_sensor(dg.build_sensor_context(resources=build_resources(settings)))
    assert result.skip_message == "Webhooks: 2 delivered, 0 to retry, 0 failed"
    assert [(r.status, r.attempts, r.last_status_code) for r in _rows(engine)] == [("delivered", 1, 250)] * 2
    assert box.logins == [(SMTP_USER, SMTP_PASSWORD)] * 2

    by_subject = {mail.message["Subject"]: mail for mail in box.mails}
    assert sorted(by_subject) == [
        'Your expert "Broken one" failed: None of the files could be read: scan.pdf (image only)',
        'Your expert "Tax adviser" is ready',
    ]
    ready = by_subject['Your expert "Tax adviser" is ready']
    assert ready.rcpt_tos == ["alice@alice.example"] and ready.message["To"] == "alice@alice.example"
    assert ready.message["From"] == SENDER and ready.mail_from == "notify@pipeline.example"
    assert ready.text.startswith("Hello alice,\n\nYour expert \"Tax adviser\" is ready (2 files indexed).")
    assert done in ready.text
    failed = by_subject['Your expert "Broken one" failed: None of the files could be read: scan.pdf (image only)']
    assert 'Your expert "Broken one" failed: None of the files could be read: scan.pdf (image only)' in failed.text
    for mail in box.mails:
        raw = mail.message.as_string()
        assert SMTP_PASSWORD not in raw and "smtp://" not in raw  # no secrets, no settings
        assert mail.message["Message-ID"].endswith("@pipeline.example>") and mail.message["Auto-Submitted"]

    # Nothing is sent twice.
    assert deliver_due(engine, smtp_env).claimed == 0 and len(box.mails) == 2


def test_a_refusing_smtp_server_is_retried_with_backoff_then_delivered(
    smtp_env: Settings, mailbox: tuple[Mailbox, int], db: Session, engine: Engine
) -> None:
    box, _ = mailbox
    box.refuse = 1
    _owner(db, "bob", [("bob@bob.example", False)])
    expert_id = _expert(db, "Recipes", "bob")
    service = ExpertProcessingProgressService(db)
    service.create_progress_record(expert_id=expert_id)
    service.mark_completed(expert_id=expert_id)
    now = utcnow()

    first = deliver_due(engine, smtp_env, now=now)
    assert (first.delivered, first.retrying) == (0, 1) and box.refused == 1 and box.mails == []
    (row,) = _rows(engine)
    assert (row.status, row.attempts, row.last_status_code) == ("pending", 1, 451)
    assert row.last_error == "SMTP 451: 4.3.0 Mailbox busy, try again later"
    assert timedelta(seconds=1) <= row.next_attempt_at - now <= timedelta(seconds=2)
    assert deliver_due(engine, smtp_env, now=now + timedelta(milliseconds=900)).claimed == 0  # not due yet

    second = deliver_due(engine, smtp_env, now=row.next_attempt_at)
    assert second.delivered == 1
    (row,) = _rows(engine)
    assert (row.status, row.attempts, row.last_status_code, row.last_error) == ("delivered", 2, 250, None)
    (mail,) = box.mails
    assert mail.rcpt_tos == ["bob@bob.example"] and mail.message["Subject"] == 'Your expert "Recipes" is ready'


def test_an_unreachable_smtp_server_is_recorded_and_retried(
    monkeypatch: pytest.MonkeyPatch, db: Session, engine: Engine
) -> None:
    monkeypatch.setenv("SMTP_URL", f"smtp://{SMTP_USER}:{SMTP_PASSWORD}@127.0.0.1:{free_port()}")
    monkeypatch.setenv("NOTIFY_EMAIL_FROM", SENDER)
    get_settings.cache_clear()
    try:
        settings = get_settings()
        _owner(db, "carol", [("carol@carol.example", False)])
        expert_id = _expert(db, "Gardening", "carol")
        service = ExpertProcessingProgressService(db)
        service.create_progress_record(expert_id=expert_id)
        service.mark_failed(expert_id=expert_id, error_message="boom")
        report = deliver_due(engine, settings)
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
    assert report.retrying == 1
    (row,) = _rows(engine)
    assert row.status == "pending" and row.last_status_code is None
    assert row.last_error.startswith("ConnectionRefusedError") and SMTP_PASSWORD not in row.last_error


def test_no_mail_rows_without_smtp_url_or_without_an_address(
    monkeypatch: pytest.MonkeyPatch, db: Session, engine: Engine, smtp_env: Settings
) -> None:
    _owner(db, "dave", [("dave@dave.example", True)])  # only a revoked token has an email
    _owner(db, "erin", [("erin@erin.example", False)])
    no_address = _expert(db, "No address", "dave")
    no_owner = _expert(db, "No owner", None)
    service = ExpertProcessingProgressService(db)
    for expert_id in (no_address, no_owner, "progress-only"):  # the last one has no expert row at all
        service.create_progress_record(expert_id=expert_id)
        service.mark_completed(expert_id=expert_id)
    assert _rows(engine) == []

    # SMTP_URL unset: email notifications are off, even for an owner with an address.
    monkeypatch.delenv("SMTP_URL")
    monkeypatch.delenv("NOTIFY_EMAIL_FROM")
    get_settings.cache_clear()
    assert get_settings().smtp_server is None
    has_address = _expert(db, "Has address", "erin")
    service.create_progress_record(expert_id=has_address)
    service.mark_completed(expert_id=has_address)
    assert _rows(engine) == []


def test_mail_subject_is_one_plain_line(
    smtp_env: Settings, mailbox: tuple[Mailbox, int], db: Session, engine: Engine
) -> None:
    box, _ = mailbox
    _owner(db, "frank", [("frank@frank.example", False)])
    expert_id = _expert(db, "Tax\r\nBcc: victim@evil.example\u202e adviser", "frank")
    service = ExpertProcessingProgressService(db)
    service.create_progress_record(expert_id=expert_id)
    service.mark_failed(expert_id=expert_id, error_message="line one\nline two " + "x" * 500)
    assert deliver_due(engine, smtp_env).delivered == 1
    (mail,) = box.mails
    subject = mail.message["Subject"]
    assert subject.startswith('Your expert "Tax Bcc: victim@evil.example adviser" failed: line one line two x')
    assert len(subject) < 200 and mail.message["Bcc"] is None and mail.rcpt_tos == ["frank@frank.example"]


def test_settings_refuse_half_configured_mail_without_echoing_the_password() -> None:
    with pytest.raises(ValueError, match="NOTIFY_EMAIL_FROM") as caught:
        Settings(smtp_url="smtps://u:hunter2@mail.example")
    assert "hunter2" not in str(caught.value)
    with pytest.raises(ValueError, match="unsupported scheme") as caught:
        Settings(smtp_url="http://u:hunter2@mail.example", notify_email_from="a@b.example")
    assert "hunter2" not in str(caught.value)
    servers = {
        url: Settings(smtp_url=url, notify_email_from="a@b.example").smtp_server
        for url in ("smtp://relay.example", "smtps://u%40x:p%3Aw@mail.example",
                    "smtp+starttls://u:p@mail.example:2587")
    }
    assert [(s.security, s.host, s.port, s.username, s.password) for s in servers.values() if s] == [
        ("plain", "relay.example", 25, None, None),
        ("tls", "mail.example", 465, "u@x", "p:w"),
        ("starttls", "mail.example", 2587, "u", "p"),
    ]
    assert "p:w" not in repr(servers["smtps://u%40x:p%3Aw@mail.example"])
