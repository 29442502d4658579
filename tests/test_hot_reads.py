"""The polled GETs answered from memory (status_api/api/hot_reads.py), over real HTTP.

Every answer from memory is compared with the FastAPI route's answer for the same state, byte
for byte (the route is reached by taking the hot layer out for one request); changes another
process makes (written here through the DB-API connection, as a pipeline worker's would be,
past this process's SQLAlchemy events) show within a tick; this process's own writes at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from expert_pipeline.core import auth
from expert_pipeline.core.models import utcnow
from expert_pipeline.core.progress_service import ExpertProcessingProgressService
from tests.conftest import LiveServer
from tests.waiting import wait_for

HOT_HEADERS_IGNORED = {"date", "server"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def create(http: httpx.Client, token: str, name: str) -> str:
    r = http.post(
        "/api/experts",
        data={"name": name},
        files={"files": ("a.txt", b"hello", "text/plain")},
        headers=bearer(token),
    )
    assert r.status_code == 201, r.text
    return str(r.json()["expert"]["id"])


def embedding(engine: Engine, expert_id: str) -> None:
    """The expert's run under way, half-way through embedding."""
    with Session(engine) as session:
        service = ExpertProcessingProgressService(session)
        service.start_run(expert_id, run_id="run-1", total_files=1)
        service.update_progress(
            expert_id=expert_id,
            stage="embedding",
            current_file="a.txt",
            current_batch=3,
            total_batches=10,
            current_chunk=30,
            total_chunks=100,
            progress_percentage=40.0,
            details={"batch": "3/10"},
            eta_seconds=12.0,
            chunks_per_second=5.0,
        )


def foreign_write(engine: Engine, sql: str, *params: Any) -> None:
    """A write this process cannot see being made (another process's): straight through the
    DB-API connection, past SQLAlchemy's events. `?` marks the parameters."""
    if engine.dialect.name != "sqlite":
        sql = sql.replace("?", "%s")
    else:  # SQLite keeps naive UTC, as the model's column type stores it
        params = tuple(p.replace(tzinfo=None) if hasattr(p, "tzinfo") else p for p in params)
    connection = engine.raw_connection()
    try:
        cursor = connection.cursor()
        cursor.execute(sql, params)
        connection.commit()
    finally:
        connection.close()


class Hot:
    """The live app's hot layer: its counters, and the route's answer for comparison."""

    def __init__(self, live_api: LiveServer, http: httpx.Client) -> None:
        self.app: Any = live_api.app  # type: ignore[attr-defined]
        self.http = http
        self.layer = self.app.hot_reads

    @property
    def broadcaster(self) -> Any:
        return self.app.state.progress_broadcaster

    def counted(self, counter: str, path: str, token: str) -> tuple[httpx.Response, bool]:
        """GET `path`, and whether the hot layer's `counter` moved (it answered)."""
        before = getattr(self.layer.stats, counter)
        response = self.http.get(path, headers=bearer(token))
        return response, getattr(self.layer.stats, counter) > before

    def from_memory(self, path: str, token: str, counter: str = "hits") -> httpx.Response:
        """The answer from memory (waiting for the poller to hold it)."""
        got: list[httpx.Response] = []

        def answered() -> bool:
            response, hot = self.counted(counter, path, token)
            got[:] = [response]
            return hot

        wait_for(f"GET {path} answered from memory", answered, timeout=10)
        return got[0]

    def from_route(self, path: str, token: str) -> httpx.Response:
        """The FastAPI route's answer: the hot layer out for this one request."""
        self.app.hot_reads = None
        try:
            return self.http.get(path, headers=bearer(token))
        finally:
            self.app.hot_reads = self.layer

    def after_ticks(self, count: int) -> None:
        """Wait for `count` reads to start and end after now (the first may be under way)."""
        target = self.broadcaster.stats.ticks + count
        wait_for(f"{count} broadcaster reads", lambda: self.broadcaster.stats.ticks >= target, timeout=10)


def same(a: httpx.Response, b: httpx.Response) -> None:
    assert (a.status_code, a.content) == (b.status_code, b.content)
    headers: Callable[[httpx.Response], list[tuple[str, str]]] = lambda r: [
        (k, v) for k, v in r.headers.multi_items() if k not in HOT_HEADERS_IGNORED
    ]
    assert headers(a) == headers(b)


@pytest.fixture
def hot(live_api: LiveServer, http: httpx.Client) -> Hot:
    return Hot(live_api, http)


def test_answers_from_memory_are_the_routes_answers_byte_for_byte(
    hot: Hot, http: httpx.Client, db: Session, engine: Engine
) -> None:
    alice, bob = auth.create_token(db, "alice"), auth.create_token(db, "bob")
    root = auth.create_token(db, "ops", operator=True)
    running, waiting, done = (
        create(http, alice, "Running"),
        create(http, alice, "Waiting"),
        create(http, alice, "Done"),
    )
    theirs = create(http, bob, "Bob's")
    embedding(engine, running)
    with Session(engine) as session:
        ExpertProcessingProgressService(session).mark_completed(expert_id=done)
    cases = [
        (f"/api/experts/{running}/progress", alice, "hits"),
        (f"/api/experts/{waiting}/progress", alice, "hits"),  # pending: its place in the queue
        (f"/api/experts/{done}/progress", alice, "hits"),  # not active: held once asked for
        (f"/api/experts/{theirs}/progress", alice, "not_found"),  # someone else's: as if missing
        (f"/api/experts/{theirs}/progress", root, "hits"),
        ("/api/experts/progress/active", alice, "hits"),
        ("/api/experts/progress/active", bob, "hits"),
        ("/api/experts/progress/active", root, "hits"),
    ]
    for path, token, counter in cases:
        answer = hot.from_memory(path, token, counter)
        same(answer, hot.from_route(path, token))
        assert (
            answer.headers["content-security-policy"]
            and answer.headers["x-content-type-options"] == "nosniff"
        )
    body = hot.from_memory(f"/api/experts/{waiting}/progress", alice).json()["progress"]
    assert (body["status"], body["queue_position"]) == ("pending", 1)  # bob's waits behind it
    assert hot.from_memory(f"/api/experts/{theirs}/progress", alice, "not_found").json() == {
        "success": False,
        "error": f"No progress record for expert '{theirs}'",
    }
    mine = hot.from_memory("/api/experts/progress/active", alice).json()
    assert {r["expert_id"] for r in mine["progress_records"]} == {running, waiting}
    everyone = hot.from_memory("/api/experts/progress/active", root).json()
    assert {r["expert_id"] for r in everyone["progress_records"]} == {running, waiting, theirs}


def test_another_processs_changes_show_within_a_tick(
    hot: Hot, http: httpx.Client, db: Session, engine: Engine
) -> None:
    alice = auth.create_token(db, "alice")
    expert_id = create(http, alice, "Running")
    embedding(engine, expert_id)
    path = f"/api/experts/{expert_id}/progress"
    assert hot.from_memory(path, alice).json()["progress"]["current_chunk"] == 30

    foreign_write(
        engine,
        "UPDATE expert_processing_progress SET current_chunk = ?, progress_percentage = ?, "
        "updated_at = ? WHERE expert_id = ?",
        60,
        70.0,
        utcnow(),
        expert_id,
    )
    hot.after_ticks(2)
    answer, from_memory = hot.counted("hits", path, alice)
    assert from_memory and (
        answer.json()["progress"]["current_chunk"],
        answer.json()["progress"]["progress_percentage"],
    ) == (60, 70.0)
    same(answer, hot.from_route(path, alice))

    # A heartbeat does not move updated_at; the answer still carries it.
    beat = utcnow()
    foreign_write(
        engine, "UPDATE expert_processing_progress SET heartbeat_at = ? WHERE expert_id = ?", beat, expert_id
    )
    hot.after_ticks(2)
    answer, from_memory = hot.counted("hits", path, alice)
    assert from_memory
    same(answer, hot.from_route(path, alice))
    assert (
        answer.json()["progress"]["heartbeat_at"]
        == hot.from_route(path, alice).json()["progress"]["heartbeat_at"]
    )

    # Deleted by another process: the same 404 as the route's, from memory.
    foreign_write(engine, "DELETE FROM expert_processing_progress WHERE expert_id = ?", expert_id)
    hot.after_ticks(2)
    answer, from_memory = hot.counted("not_found", path, alice)
    assert from_memory and answer.status_code == 404
    same(answer, hot.from_route(path, alice))
    assert hot.from_memory("/api/experts/progress/active", alice).json()["count"] == 0


def test_this_processs_writes_show_at_once_and_misses_go_to_the_database(
    hot: Hot, http: httpx.Client, db: Session, engine: Engine
) -> None:
    alice = auth.create_token(db, "alice")
    first = create(http, alice, "First")
    assert hot.from_memory(f"/api/experts/{first}/progress", alice).json()["progress"]["status"] == "pending"
    # Cancelled through the API: the very next GET says so.
    assert http.post(f"/api/experts/{first}/cancel", headers=bearer(alice)).status_code == 200
    assert (
        http.get(f"/api/experts/{first}/progress", headers=bearer(alice)).json()["progress"]["status"]
        == "cancelled"
    )
    # Created after the last read: answered at once, correctly (by the route), then from memory.
    second = create(http, alice, "Second")
    path = f"/api/experts/{second}/progress"
    now = http.get(path, headers=bearer(alice))
    assert now.status_code == 200 and now.json()["progress"]["status"] == "pending"
    same(hot.from_memory(path, alice), hot.from_route(path, alice))
    # Not held (finished while nobody polled, so the poller was stopped): a miss, answered by
    # the route, then held from the next read on.
    hot.broadcaster.hold_seconds = 0.2
    hot.broadcaster.hold()
    wait_for("the poller to stop", lambda: not hot.broadcaster.running, timeout=10)
    with Session(engine) as session:
        ExpertProcessingProgressService(session).mark_completed(expert_id=second)
    answer, missed = hot.counted("misses", path, alice)
    assert missed and answer.status_code == 200 and answer.json()["progress"]["status"] == "completed"
    same(hot.from_memory(path, alice), answer)


def test_revoked_tokens_are_refused(hot: Hot, http: httpx.Client, db: Session, engine: Engine) -> None:
    alice, carol = auth.create_token(db, "alice"), auth.create_token(db, "carol")
    expert_id = create(http, alice, "Alice's")
    path = f"/api/experts/{expert_id}/progress"
    hot.from_memory(path, alice)
    auth.revoke_token(db, alice)  # through this process: refused at once
    refused = http.get(path, headers=bearer(alice))
    assert refused.status_code == 401 and refused.json()["error"] == "The API token has been revoked."
    hot.from_memory("/api/experts/progress/active", carol)
    # Revoked by another process (the CLI): refused within the in-memory copy's bound.
    foreign_write(
        engine,
        "UPDATE api_tokens SET revoked_at = ? WHERE token_sha256 = ?",
        utcnow(),
        auth.hash_token(carol),
    )
    wait_for(
        "carol's revoked token refused",
        lambda: http.get("/api/experts/progress/active", headers=bearer(carol)).status_code == 401,
        timeout=10,
    )


def test_local_mode_is_not_answered_from_memory(hot: Hot, http: httpx.Client) -> None:
    r = http.post("/api/experts", data={"name": "Local"}, files={"files": ("a.txt", b"hello", "text/plain")})
    expert_id = r.json()["expert"]["id"]
    for _ in range(3):
        assert http.get(f"/api/experts/{expert_id}/progress").json()["progress"]["expert_id"] == expert_id
        assert http.get("/api/experts/progress/active").json()["count"] == 1
    assert (hot.layer.stats.hits, hot.layer.stats.not_found) == (0, 0)
