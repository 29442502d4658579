"""Signed webhooks: outbox rows in the terminal state's transaction, delivery, retries, signing."""

from __future__ import annotations

import json
import random
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import dagster as dg
import httpx
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, inspect, select
from sqlalchemy.orm import Session

from expert_pipeline.automation.notifications import webhook_delivery_sensor
from expert_pipeline.core.db import alembic_config, engine_for, migrate
from expert_pipeline.core.models import Base, WebhookDelivery, utcnow
from expert_pipeline.core.notifications.delivery import EVENT_HEADER, deliver_due
from expert_pipeline.core.notifications.outbox import backoff_seconds, enqueue_finished
from expert_pipeline.core.notifications.payload import encode_body
from expert_pipeline.core.notifications.signing import (
    DELIVERY_HEADER,
    SIGNATURE_HEADER,
    ReplayGuard,
    WebhookRejected,
    sign,
    verify_signature,
    verify_webhook,
)
from expert_pipeline.core.progress_public import SPEC_FIELDS, ProgressRecord
from expert_pipeline.core.progress_service import ExpertProcessingProgressService
from expert_pipeline.core.settings import Settings, get_settings
from expert_pipeline.resources.parts import build_resources
from tests.conftest import SHARED_DIR, free_port

SECRET = "whsec_test_3f9a"


# -- a real HTTP receiver ----------------------------------------------------------------------


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    rejected: str | None = None  # why the receiver refused it (WebhookRejected.reason), if it did

    @property
    def json(self) -> dict:
        return json.loads(self.body)


class Receiver:
    """http.server on a free port: records every POST; answers 500 to the first `fail_first`.

    With `secret` set it verifies each request as a real receiver would (`verify_webhook` with
    one `ReplayGuard`) and answers 401 with the reason to a request it rejects.
    """

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.fail_first = 0
        self.delay = 0.0
        self.secret: str | None = None
        self.guard = ReplayGuard()
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                headers = dict(self.headers.items())
                rejected: str | None = None
                with receiver._lock:
                    failing = len(receiver.requests) + 1 <= receiver.fail_first
                    if receiver.secret is not None and not failing:
                        try:
                            verify_webhook(receiver.secret, headers, body, receiver.guard)
                        except WebhookRejected as exc:
                            rejected = exc.reason
                    receiver.requests.append(Received(self.path, headers, body, rejected))
                if receiver.delay:
                    time.sleep(receiver.delay)
                if rejected is not None:
                    answer, status = f"rejected: {rejected}".encode(), 401
                else:
                    answer, status = (b"receiver exploded", 500) if failing else (b"ok", 200)
                self.send_response(status)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *_: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


@pytest.fixture
def hook_settings(settings: Settings, receiver: Receiver) -> Settings:
    receiver.secret = SECRET  # the receiver verifies every delivery, and refuses replays
    return settings.model_copy(
        update={"webhook_urls": [f"{receiver.url}/hook"], "webhook_secret": SECRET, "webhook_max_attempts": 8}
    )


# -- helpers -----------------------------------------------------------------------------------


def _finish(db: Session, expert_id: str, how: str, settings: Settings) -> None:
    """Reach a terminal state and enqueue in that transaction, as the progress service will.

    Until the service calls enqueue_finished itself, the call is made here after the state is
    committed and committed separately; the payload is the same.
    """
    service = ExpertProcessingProgressService(db)
    service.create_progress_record(expert_id=expert_id, agent_id="agent-7", total_files=2)
    service.update_progress(expert_id=expert_id, stage="embedding", current_batch=3, total_batches=4,
                            progress_percentage=60.0)
    if how == "completed":
        record = service.mark_completed(expert_id=expert_id, metadata={"total_time": 12.5})
    elif how == "failed":
        record = service.mark_failed(expert_id=expert_id, error_message="OpenAI API error")
    else:
        record = service.mark_cancelled(expert_id=expert_id, reason="Cancelled by user")
    if not db.scalars(select(WebhookDelivery).where(WebhookDelivery.expert_id == expert_id)).first():
        enqueue_finished(db, record, settings)
        db.commit()


def _rows(engine: Engine) -> list[WebhookDelivery]:
    with Session(engine) as session:
        return list(session.scalars(select(WebhookDelivery).order_by(WebhookDelivery.id)))


def _due(engine: Engine) -> int:
    with Session(engine) as session:
        return len(session.scalars(select(WebhookDelivery.id).where(
            WebhookDelivery.status == "pending", WebhookDelivery.next_attempt_at <= utcnow())).all())


def _only_row(engine: Engine) -> WebhookDelivery:
    (row,) = _rows(engine)
    return row


# -- settings ----------------------------------------------------------------------------------


def test_settings_read_comma_separated_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEBHOOK_URLS", " https://a.example/hook ,http://b.example/x,")
    monkeypatch.setenv("WEBHOOK_SECRET", "s3")
    monkeypatch.setenv("WEBHOOK_MAX_ATTEMPTS", "3")
    settings = Settings()
    assert settings.webhook_urls == ["https://a.example/hook", "http://b.example/x"]
    assert settings.webhook_secret == "s3"
    assert (settings.webhook_max_attempts, settings.webhook_timeout_seconds) == (3, 10)

    monkeypatch.setenv("WEBHOOK_URLS", "")
    monkeypatch.setenv("WEBHOOK_SECRET", "")
    assert Settings().webhook_urls == [] and Settings().webhook_secret is None
    monkeypatch.delenv("WEBHOOK_URLS")
    monkeypatch.delenv("WEBHOOK_MAX_ATTEMPTS")
    assert Settings().webhook_max_attempts == 8 and Settings().webhook_urls == []

    monkeypatch.setenv("WEBHOOK_URLS", "ftp://nope")
    with pytest.raises(ValueError, match="not an http"):
        Settings()


# -- outbox ------------------------------------------------------------------------------------


def test_enqueue_without_urls_adds_nothing(db: Session, engine: Engine, settings: Settings,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WEBHOOK_URLS", raising=False)
    get_settings.cache_clear()
    try:
        service = ExpertProcessingProgressService(db)
        service.create_progress_record(expert_id="quiet")
        record = service.mark_completed(expert_id="quiet")
        enqueue_finished(db, record)  # settings from the environment: no URLs
        enqueue_finished(db, record, settings)
        assert not db.new
        db.commit()
    finally:
        get_settings.cache_clear()
    assert _rows(engine) == []


def test_enqueue_is_part_of_the_callers_transaction(db: Session, engine: Engine, settings: Settings) -> None:
    urls = ["http://one.example/hook", "http://two.example/hook"]
    hooked = settings.model_copy(update={"webhook_urls": [*urls, urls[0]]})
    service = ExpertProcessingProgressService(db)
    service.create_progress_record(expert_id="exp-1", agent_id="agent-1", total_files=1)
    record = service.mark_failed(expert_id="exp-1", error_message="disk full")

    enqueue_finished(db, record, hooked)
    db.rollback()  # the caller's transaction fails: its webhooks go with it
    assert _rows(engine) == []

    enqueue_finished(db, record, hooked)
    db.commit()
    rows = _rows(engine)
    assert sorted(r.url for r in rows) == sorted(urls)  # one per distinct URL
    assert len({r.event_id for r in rows}) == 1
    row = rows[0]
    assert (row.status, row.attempts) == ("pending", 0)
    assert (row.event_type, row.expert_id) == ("expert.failed", "exp-1")
    assert row.next_attempt_at <= utcnow()
    payload = row.payload
    assert payload["event_id"] == row.event_id and payload["type"] == "expert.failed"
    assert payload["expert_id"] == "exp-1" and payload["created_at"].endswith("Z")
    progress = payload["progress"]
    assert list(progress) == list(SPEC_FIELDS)
    assert progress["status"] == "failed" and progress["stage"] == "failed"
    assert progress["error_message"] == "disk full" and progress["agent_id"] == "agent-1"
    assert progress["completed_at"].endswith("Z") and progress["id"] == record.id


def test_progress_fields_are_exactly_the_specifications() -> None:
    spec = SHARED_DIR / "spec" / "expert-processing-progress.md"
    if not spec.exists():
        pytest.skip(f"specification not found at {spec}")
    blocks = re.findall(r"```json\n(.*?)```", spec.read_text(), flags=re.S)
    example = next(json.loads(b) for b in blocks if '"progress": {' in b)
    assert list(SPEC_FIELDS) == list(example["progress"])
    # The API may publish more beside them; the webhook carries the specification's fields.
    assert list(ProgressRecord.model_fields)[: len(SPEC_FIELDS)] == list(SPEC_FIELDS)


def test_enqueue_refuses_a_running_record(db: Session, settings: Settings) -> None:
    hooked = settings.model_copy(update={"webhook_urls": ["http://one.example/hook"]})
    record = ExpertProcessingProgressService(db).create_progress_record(expert_id="running")
    with pytest.raises(ValueError, match="no webhook event for status 'pending'"):
        enqueue_finished(db, record, hooked)


def test_progress_service_enqueues_with_the_terminal_state(
    db: Session, engine: Engine, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    import inspect

    from expert_pipeline.core import progress_service

    if "enqueue_finished" not in inspect.getsource(progress_service):
        pytest.skip("the progress service does not call enqueue_finished yet")
    monkeypatch.setenv("WEBHOOK_URLS", f"{receiver.url}/hook")
    get_settings.cache_clear()
    try:
        service = ExpertProcessingProgressService(db)
        for expert_id in ("done", "broken", "stopped"):
            service.create_progress_record(expert_id=expert_id)
        service.mark_completed(expert_id="done")
        service.mark_failed(expert_id="broken", error_message="boom")
        service.mark_cancelled(expert_id="stopped")
        service.mark_completed(expert_id="done")  # already finished: no second event
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
    assert sorted((r.expert_id, r.event_type) for r in _rows(engine)) == [
        ("broken", "expert.failed"), ("done", "expert.completed"), ("stopped", "expert.cancelled"),
    ]


# -- delivery ----------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["completed", "failed", "cancelled"])
def test_finished_expert_is_delivered_signed(
    how: str, db: Session, engine: Engine, hook_settings: Settings, receiver: Receiver
) -> None:
    _finish(db, "exp-42", how, hook_settings)

    report = deliver_due(engine, hook_settings)
    assert (report.claimed, report.delivered, report.retrying, report.failed) == (1, 1, 0, 0)

    (request,) = receiver.requests
    row = _only_row(engine)
    assert request.path == "/hook"
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers[EVENT_HEADER] == f"expert.{how}"
    assert request.rejected is None  # the receiver verified it with verify_webhook
    delivery_id = request.headers[DELIVERY_HEADER]
    assert re.fullmatch(r"[0-9a-f]{32}", delivery_id) and delivery_id != row.event_id
    assert verify_signature(SECRET, request.body, request.headers[SIGNATURE_HEADER], delivery_id=delivery_id)
    event = request.json
    assert event["type"] == f"expert.{how}" and event["event_id"] == row.event_id
    assert event["expert_id"] == "exp-42" and event["progress"]["status"] == how
    if how == "completed":
        assert event["progress"]["progress_percentage"] == 100.0
        assert event["progress"]["details"] == {"total_time": 12.5}
    else:
        assert event["progress"]["error_message"] in ("OpenAI API error", "Cancelled by user")

    assert (row.status, row.attempts, row.last_status_code, row.last_error) == ("delivered", 1, 200, None)
    assert row.delivered_at is not None

    # Nothing is sent twice.
    assert deliver_due(engine, hook_settings).claimed == 0
    assert len(receiver.requests) == 1


def test_every_url_gets_the_same_event(db: Session, engine: Engine, hook_settings: Settings,
                                       receiver: Receiver) -> None:
    two = hook_settings.model_copy(update={"webhook_urls": [f"{receiver.url}/a", f"{receiver.url}/b"]})
    _finish(db, "exp-2", "completed", two)
    assert deliver_due(engine, two).delivered == 2
    assert sorted(r.path for r in receiver.requests) == ["/a", "/b"]
    assert receiver.requests[0].body == receiver.requests[1].body
    assert {r.json["event_id"] for r in receiver.requests} == {r.event_id for r in _rows(engine)}
    assert len({r.headers[DELIVERY_HEADER] for r in receiver.requests}) == 2  # one delivery id per request
    assert [r.rejected for r in receiver.requests] == [None, None]
    assert all(r.status == "delivered" for r in _rows(engine))


def test_without_a_secret_requests_are_unsigned(db: Session, engine: Engine, hook_settings: Settings,
                                                receiver: Receiver) -> None:
    unsigned = hook_settings.model_copy(update={"webhook_secret": None})
    receiver.secret = None  # a receiver that does not check (it could not tell us from anyone)
    _finish(db, "exp-3", "completed", unsigned)
    assert deliver_due(engine, unsigned).delivered == 1
    (request,) = receiver.requests
    assert SIGNATURE_HEADER not in request.headers and request.json["type"] == "expert.completed"


def test_server_errors_are_retried_with_backoff_then_delivered(
    db: Session, engine: Engine, hook_settings: Settings, receiver: Receiver
) -> None:
    receiver.fail_first = 2
    _finish(db, "exp-5", "completed", hook_settings)
    now = utcnow()

    first = deliver_due(engine, hook_settings, now=now)
    assert (first.delivered, first.retrying) == (0, 1)
    row = _only_row(engine)
    assert (row.status, row.attempts, row.last_status_code) == ("pending", 1, 500)
    assert row.last_error.startswith("HTTP 500") and "receiver exploded" in row.last_error
    assert timedelta(seconds=1) <= row.next_attempt_at - now <= timedelta(seconds=2)

    # Not due yet: nothing is sent before the backoff has passed.
    assert deliver_due(engine, hook_settings, now=now + timedelta(milliseconds=900)).claimed == 0
    assert len(receiver.requests) == 1

    now = row.next_attempt_at
    assert deliver_due(engine, hook_settings, now=now).retrying == 1
    row = _only_row(engine)
    assert (row.attempts, row.last_status_code) == (2, 500)
    assert timedelta(seconds=2) <= row.next_attempt_at - now <= timedelta(seconds=4)

    third = deliver_due(engine, hook_settings, now=row.next_attempt_at)
    assert third.delivered == 1
    row = _only_row(engine)
    assert (row.status, row.attempts, row.last_status_code, row.last_error) == ("delivered", 3, 200, None)
    assert len(receiver.requests) == 3
    # One event (the id receivers de-duplicate on), three deliveries each with its own id and signature.
    assert {r.json["event_id"] for r in receiver.requests} == {row.event_id}
    assert len({r.headers[DELIVERY_HEADER] for r in receiver.requests}) == 3
    assert all(
        verify_signature(SECRET, r.body, r.headers[SIGNATURE_HEADER], delivery_id=r.headers[DELIVERY_HEADER])
        for r in receiver.requests
    )
    assert receiver.requests[-1].rejected is None


def test_unreachable_url_fails_after_max_attempts(db: Session, engine: Engine, settings: Settings) -> None:
    dead = settings.model_copy(update={
        "webhook_urls": [f"http://127.0.0.1:{free_port()}/hook"], "webhook_secret": SECRET,
        "webhook_max_attempts": 4, "webhook_timeout_seconds": 2.0,
    })
    _finish(db, "exp-6", "failed", dead)
    now = utcnow()
    for attempt in range(1, 5):
        report = deliver_due(engine, dead, now=now)
        row = _only_row(engine)
        assert row.attempts == attempt and row.last_status_code is None
        assert "ConnectError" in row.last_error
        if attempt < 4:
            assert report.retrying == 1 and row.status == "pending"
            delay = (row.next_attempt_at - now).total_seconds()
            assert 2 ** attempt / 2 <= delay <= 2 ** attempt
            now = row.next_attempt_at
    assert (report.failed, row.status) == (1, "failed")
    assert row.delivered_at is None
    assert deliver_due(engine, dead, now=now + timedelta(days=1)).claimed == 0


def test_a_claim_that_never_reported_its_last_attempt_is_failed_not_resent(
    engine: Engine, hook_settings: Settings, receiver: Receiver
) -> None:
    # A worker claimed attempt 8 of 8 and died: after the lease the row is failed, not sent again.
    with Session(engine) as session:
        session.add(WebhookDelivery(event_id="e-1", expert_id="x", event_type="expert.completed",
                                    url=f"{receiver.url}/hook", payload={"type": "expert.completed"},
                                    status="pending", attempts=8, last_error="HTTP 503",
                                    next_attempt_at=utcnow() - timedelta(seconds=1)))
        session.commit()
    report = deliver_due(engine, hook_settings)
    assert (report.claimed, report.failed) == (0, 1)
    row = _only_row(engine)
    assert (row.status, row.attempts, row.last_error) == ("failed", 8, "HTTP 503")
    assert receiver.requests == []


def test_backoff_grows_with_jitter_and_is_capped() -> None:
    rng = random.Random(7)
    for attempts in range(1, 12):
        delays = {backoff_seconds(attempts, rng) for _ in range(20)}
        step = min(3600, 2 ** attempts)
        assert all(step / 2 <= d <= step for d in delays) and len(delays) > 1
    assert all(1800 <= backoff_seconds(n, rng) <= 3600 for n in (12, 20, 500))


def test_concurrent_workers_never_send_a_row_twice(
    db: Session, engine: Engine, hook_settings: Settings, receiver: Receiver
) -> None:
    two = hook_settings.model_copy(update={"webhook_urls": [f"{receiver.url}/a", f"{receiver.url}/b"]})
    for n in range(10):
        _finish(db, f"exp-{n}", "completed", two)
    receiver.delay = 0.02  # keep both workers busy at the same time
    barrier = threading.Barrier(4)
    reports: dict[str, list] = {}
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            barrier.wait()
            mine = reports.setdefault(threading.current_thread().name, [])
            deadline = time.monotonic() + 20
            while _due(engine) and time.monotonic() < deadline:
                mine.append(deliver_due(engine, two, limit=3, max_workers=2))
        except BaseException as exc:  # noqa: BLE001 - surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors
    assert all(r.rejected is None for r in receiver.requests)
    sent = [(r.json["event_id"], r.path) for r in receiver.requests]
    assert len(sent) == 20 and len(set(sent)) == 20
    assert sum(r.delivered for mine in reports.values() for r in mine) == 20
    assert sum(1 for mine in reports.values() if any(r.delivered for r in mine)) >= 2  # work was shared
    assert all((r.status, r.attempts) == ("delivered", 1) for r in _rows(engine))


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)  # SKIP LOCKED is PostgreSQL's
def test_rows_locked_by_another_worker_are_skipped_not_waited_for(
    database_url: str, db: Session, engine: Engine, hook_settings: Settings, receiver: Receiver
) -> None:
    _finish(db, "exp-a", "completed", hook_settings)
    _finish(db, "exp-b", "completed", hook_settings)
    with Session(engine) as other:  # another worker, mid-claim on exp-a's row
        other.scalars(
            select(WebhookDelivery).where(WebhookDelivery.expert_id == "exp-a").with_for_update()
        ).one()
        # In a thread, so a regression that waits on the lock fails here instead of hanging.
        result: list = []
        worker = threading.Thread(
            target=lambda: result.append(deliver_due(engine, hook_settings)), daemon=True
        )
        worker.start()
        worker.join(timeout=10)
        assert result, "deliver_due waited on a row another worker holds"
        (report,) = result
        assert (report.claimed, report.delivered) == (1, 1)
        assert [r.json["expert_id"] for r in receiver.requests] == ["exp-b"]
        other.rollback()
    assert deliver_due(engine, hook_settings).delivered == 1
    assert sorted(r.json["expert_id"] for r in receiver.requests) == ["exp-a", "exp-b"]


# -- signatures --------------------------------------------------------------------------------


def test_verify_signature_accepts_only_the_exact_recent_body_and_delivery() -> None:
    body = encode_body({"type": "expert.completed", "expert_id": "e"})
    now = time.time()
    did = "3f2c9a0b5d6e4f718293a4b5c6d7e8f9"
    header = sign(SECRET, body, int(now), delivery_id=did)

    def ok(secret: str = SECRET, data: bytes = body, value: str = header, delivery_id: str = did, **kw: float) -> bool:
        return verify_signature(secret, data, value, delivery_id=delivery_id, **{"now": now, **kw})

    assert ok()
    assert verify_signature(SECRET, body, header, delivery_id=did)  # default now: the wall clock
    assert not ok(data=body.replace(b"completed", b"failed"))  # tampered body
    assert not ok(delivery_id="0" * 32)  # another delivery id: the signature covers it
    assert not ok(secret=SECRET + "x")  # wrong secret
    assert not ok(now=now + 301)  # stale: replay
    assert ok(now=now + 299)
    assert not ok(tolerance_seconds=10, now=now + 11)
    assert not ok(now=now - 301)  # from the future
    t = int(now)
    forged = sign(SECRET, body, t - 1000, delivery_id=did).split(",")[1]  # an old v1 with a fresh t
    assert not ok(value=f"t={t},{forged}")
    for bad in ("", "garbage", f"t={t}", header.split(",")[1], f"t=soon,{header.split(',')[1]}"):
        assert not ok(value=bad)
    for bad_id in ("", "a.b", "x" * 129, "id with space"):  # a dot would make "t.id.body" ambiguous
        assert not ok(delivery_id=bad_id)
    with pytest.raises(ValueError, match="invalid delivery id"):
        sign(SECRET, body, t, delivery_id="a.b")
    assert not ok(secret="")
    # Rotation: the sender may sign with the old and the new secret at once.
    rotated = f"{header},v1={sign('old-secret', body, t, delivery_id=did).split('v1=')[1]}"
    assert ok(value=rotated) and ok(secret="old-secret", value=rotated)


def test_verify_webhook_rejects_replays_and_says_why() -> None:
    body = encode_body({"event_id": "ev-1", "type": "expert.completed", "expert_id": "e"})
    now = 1_800_000_000.0
    guard = ReplayGuard()

    def headers(delivery_id: str, t: float) -> dict[str, str]:
        return {DELIVERY_HEADER.lower(): delivery_id,  # header names are matched case-insensitively
                SIGNATURE_HEADER: sign(SECRET, body, int(t), delivery_id=delivery_id)}

    first = verify_webhook(SECRET, headers("d1", now), body, guard, now=now)
    assert (first.delivery_id, first.timestamp, first.event["event_id"]) == ("d1", int(now), "ev-1")

    def reason(h: dict[str, str], data: bytes = body, at: float = now) -> str:
        with pytest.raises(WebhookRejected) as caught:
            verify_webhook(SECRET, h, data, guard, now=at)
        return caught.value.reason

    assert reason(headers("d1", now), at=now + 60) == "replayed"  # the same request again
    assert reason(headers("d2", now - 400)) == "stale"  # re-signed with a new id, but an old t
    swapped = {**headers("d1", now), DELIVERY_HEADER: "d3"}  # a fresh id pasted onto a captured request
    assert reason(swapped) == "bad_signature"
    assert reason({DELIVERY_HEADER: "d4"}) == "unsigned"
    assert reason({DELIVERY_HEADER: "bad.id", SIGNATURE_HEADER: "t=1,v1=00"}) == "malformed"
    assert reason(headers("d5", now), data=body + b" ") == "bad_signature"
    assert len(guard) == 1  # only the accepted delivery is remembered, never a refused one

    # An id is forgotten once its t has left the window; a replay after that is stale anyway.
    assert reason(headers("d1", now), at=now + 301) == "stale"
    assert verify_webhook(SECRET, headers("d6", now + 301), body, guard, now=now + 301).delivery_id == "d6"
    assert len(guard) == 1


def test_a_replayed_delivery_is_refused_by_a_real_receiver(
    db: Session, engine: Engine, hook_settings: Settings, receiver: Receiver
) -> None:
    _finish(db, "exp-r", "completed", hook_settings)
    assert deliver_due(engine, hook_settings).delivered == 1
    (original,) = receiver.requests
    assert original.rejected is None

    def post(headers: dict[str, str], body: bytes) -> httpx.Response:
        keep = {k: v for k, v in headers.items() if k.lower() not in ("host", "content-length")}
        return httpx.post(f"{receiver.url}/hook", content=body, headers=keep, timeout=10)

    # Captured and sent again verbatim, within the time window: the delivery id was seen.
    replay = post(original.headers, original.body)
    assert (replay.status_code, replay.text) == (401, "rejected: replayed")

    # Re-signed (as someone holding the secret could) with a new delivery id but the old, stale t.
    stale_t = int(original.headers[SIGNATURE_HEADER].split(",")[0][2:]) - 600
    resigned = {**original.headers, DELIVERY_HEADER: "f" * 32,
                SIGNATURE_HEADER: sign(SECRET, original.body, stale_t, delivery_id="f" * 32)}
    assert post(resigned, original.body).text == "rejected: stale"

    # A new delivery id pasted onto the captured request: the signature no longer matches.
    swapped = {**original.headers, DELIVERY_HEADER: "e" * 32}
    assert post(swapped, original.body).text == "rejected: bad_signature"

    assert [r.rejected for r in receiver.requests] == [None, "replayed", "stale", "bad_signature"]
    assert _only_row(engine).status == "delivered"  # the outbox sent it once


# -- the sensor, the code location, the migration ----------------------------------------------


@pytest.fixture
def webhook_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("WEBHOOK_SECRET", SECRET)
    get_settings.cache_clear()
    yield
    monkeypatch.undo()
    get_settings.cache_clear()


def test_sensor_delivers_and_reports(webhook_env: None, db: Session, engine: Engine, settings: Settings,
                                     hook_settings: Settings, receiver: Receiver) -> None:
    _finish(db, "exp-s", "cancelled", hook_settings)
    context = dg.build_sensor_context(resources=build_resources(settings))
    result = webhook_delivery_sensor(context)
    assert isinstance(result, dg.SkipReason)
    assert result.skip_message == "Webhooks: 1 delivered, 0 to retry, 0 failed"
    (request,) = receiver.requests
    assert request.json["type"] == "expert.cancelled"
    assert request.rejected is None
    assert _only_row(engine).status == "delivered"

    idle = webhook_delivery_sensor(dg.build_sensor_context(resources=build_resources(settings)))
    assert idle.skip_message == "No webhook deliveries due" and len(receiver.requests) == 1


def test_code_location_runs_the_sensor_by_default(settings: Settings) -> None:
    from expert_pipeline.definitions import build_definitions

    sensor = build_definitions(settings).resolve_sensor_def("webhook_delivery_sensor")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert sensor.minimum_interval_seconds == 5
    assert not sensor.targets  # it launches no runs


def test_migration_matches_the_model(engine: Engine) -> None:
    with engine.connect() as connection:
        diffs = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert [d for d in diffs if "webhook_deliveries" in repr(d)] == []


def test_migration_downgrades_and_upgrades(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    migrate(url)
    engine = engine_for(url)
    assert "webhook_deliveries" in inspect(engine).get_table_names()
    with engine.begin() as connection:
        config = alembic_config(url)
        config.attributes["connection"] = connection
        command.downgrade(config, "0002")
    assert "webhook_deliveries" not in inspect(engine).get_table_names()
    migrate(url)
    assert "webhook_deliveries" in inspect(engine).get_table_names()
    engine.dispose()
