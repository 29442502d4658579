"""Stream tickets, token expiry and revocation, over real HTTP (SQLite and PostgreSQL).

EventSource cannot send headers, and a token in a URL ends up in logs: a stream opens with a
single-use ticket from `POST /api/stream-tickets`. Tokens may expire or be revoked
(`expert-pipeline tokens revoke`); a revoked token's open streams end within 30 s.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from expert_pipeline.core import auth
from expert_pipeline.core.models import ApiToken, StreamTicket, utcnow
from expert_pipeline.core.progress_service import ExpertProcessingProgressService
from expert_pipeline.core.settings import Settings
from status_api.main import create_app
from tests.conftest import LiveServer
from tests.waiting import wait_for
from tests.streams import first_progress_chunk

STREAM = "/api/experts/progress/stream"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def new_ticket(http: httpx.Client, token: str | None) -> str:
    r = http.post("/api/stream-tickets", headers=bearer(token) if token else {})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"ticket", "expires_in"} and body["expires_in"] == 60
    return str(body["ticket"])


def create_expert(http: httpx.Client, token: str | None, name: str) -> str:
    r = http.post("/api/experts", data={"name": name}, files={"files": ("a.txt", b"words")},
                  headers=bearer(token) if token else {})
    assert r.status_code == 201, r.text
    return str(r.json()["expert"]["id"])


def test_a_ticket_opens_one_stream_once(http: httpx.Client, db: Session) -> None:
    alice = auth.create_token(db, "alice")
    bob = auth.create_token(db, "bob")
    a_id = create_expert(http, alice, "Alice's")
    b_id = create_expert(http, bob, "Bob's")
    # Tickets are for token holders, asked for with the header.
    assert http.post("/api/stream-tickets").status_code == 401
    assert http.post("/api/stream-tickets", params={"access_token": alice}).status_code == 401

    ticket = new_ticket(http, bob)
    assert ticket.startswith("st_") and bob not in ticket
    # Stored as its hash only, tied to Bob's token, for a minute.
    row = db.scalar(select(StreamTicket))
    assert row is not None and row.ticket_sha256 == auth.hash_token(ticket)
    assert row.token_id == db.scalar(select(ApiToken.id).where(ApiToken.owner == "bob"))
    assert timedelta(seconds=55) < row.expires_at - utcnow() <= timedelta(seconds=60)

    seen = first_progress_chunk(http, STREAM, params={"ticket": ticket})  # the stream shows what Bob's token may see
    assert b_id in seen and a_id not in seen
    assert db.scalar(select(StreamTicket)) is None  # used up
    again = http.get(STREAM, params={"ticket": ticket})
    assert again.status_code == 401 and "single-use" in again.json()["error"]
    assert again.headers["www-authenticate"] == "Bearer"
    assert http.get(STREAM, params={"ticket": "st_made-up"}).status_code == 401
    # One expert's stream too; someone else's expert answers as a missing one.
    assert a_id in first_progress_chunk(http, f"/api/experts/{a_id}/progress/stream", params={"ticket": new_ticket(http, alice)})
    theirs = http.get(f"/api/experts/{a_id}/progress/stream", params={"ticket": new_ticket(http, bob)})
    assert theirs.status_code == 404
    # A ticket opens streams only: it is no token for anything else.
    assert http.get("/api/experts", params={"ticket": new_ticket(http, alice)}).status_code == 401
    # The header still works on the streams, for clients that can send one.
    with http.stream("GET", STREAM, headers=bearer(alice), timeout=10) as response:
        assert response.status_code == 200


def test_expired_tickets_and_tickets_of_revoked_tokens_are_refused(http: httpx.Client, db: Session) -> None:
    alice = auth.create_token(db, "alice")
    late = new_ticket(http, alice)
    db.execute(update(StreamTicket).values(expires_at=utcnow() - timedelta(seconds=1)))
    db.commit()
    assert http.get(STREAM, params={"ticket": late}).status_code == 401
    pending = new_ticket(http, alice)
    assert db.scalar(select(StreamTicket.ticket_sha256)) == auth.hash_token(pending)  # the expired one was swept
    auth.revoke_token(db, alice)
    r = http.get(STREAM, params={"ticket": pending})
    assert r.status_code == 401 and r.json()["error"] == "The API token has been revoked."


def test_local_mode_tickets_end_with_local_mode(http: httpx.Client, db: Session) -> None:
    expert_id = create_expert(http, None, "Local")
    assert expert_id in first_progress_chunk(http, STREAM, params={"ticket": new_ticket(http, None)})  # issued without a token
    assert db.scalar(select(StreamTicket)) is None
    leftover = new_ticket(http, None)
    auth.create_token(db, "alice")
    assert http.get(STREAM, params={"ticket": leftover}).status_code == 401


def test_any_api_process_redeems_a_ticket_once(settings: Settings, db: Session) -> None:
    """Two API processes on one database (as `uvicorn --workers 2` runs): the ticket one
    issues opens a stream on the other, and then on neither."""
    token = auth.create_token(db, "alice")
    with LiveServer(create_app(settings)) as one, LiveServer(create_app(settings)) as two, \
            httpx.Client(base_url=one.url, timeout=10) as first, httpx.Client(base_url=two.url, timeout=10) as second:
        create_expert(first, token, "Shared")
        ticket = new_ticket(first, token)
        assert "event: progress" in first_progress_chunk(second, STREAM, params={"ticket": ticket})
        assert second.get(STREAM, params={"ticket": ticket}).status_code == 401
        assert first.get(STREAM, params={"ticket": ticket}).status_code == 401


# --- expiry and revocation ------------------------------------------------------------------------


def test_expired_and_revoked_tokens_say_so(http: httpx.Client, db: Session) -> None:
    soon = auth.create_token(db, "alice", expires_in=timedelta(days=30), email="alice@example.com")
    gone = auth.create_token(db, "bob")
    assert http.get("/api/experts", headers=bearer(soon)).status_code == 200
    db.execute(update(ApiToken).where(ApiToken.owner == "alice").values(expires_at=utcnow() - timedelta(seconds=1)))
    db.commit()
    r = http.get("/api/experts", headers=bearer(soon))
    assert r.status_code == 401 and r.json()["error"] == "The API token has expired."
    assert r.headers["www-authenticate"] == "Bearer"
    assert http.post("/api/stream-tickets", headers=bearer(soon)).status_code == 401
    auth.revoke_token(db, gone)
    r = http.get("/api/experts", headers=bearer(gone))
    assert r.status_code == 401 and r.json()["error"] == "The API token has been revoked."
    # Neither brings back local mode: the rows are kept.
    assert http.get("/api/experts").status_code == 401


def test_cli_creates_lists_and_revokes_tokens(
    http: httpx.Client, settings: Settings, database_url: str, db: Session,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    from expert_pipeline import cli
    from expert_pipeline.core.settings import get_settings

    monkeypatch.setenv("EXPERT_PIPELINE_HOME", str(settings.expert_pipeline_home))
    monkeypatch.setenv("DATABASE_URL", database_url)
    get_settings.cache_clear()

    def run(*argv: str) -> tuple[int, str, str]:
        code = cli.main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    try:
        code, out, _ = run("tokens", "create", "--owner", "carol", "--expires-in", "30d", "--email", "carol@example.com")
        assert code == 0 and "expires at" in out
        carol = next(line for line in out.splitlines() if line.startswith("ep_"))
        code, out, _ = run("tokens", "create", "--owner", "dave")
        dave = next(line for line in out.splitlines() if line.startswith("ep_"))
        with pytest.raises(SystemExit):
            cli.main(["tokens", "create", "--owner", "x", "--expires-in", "soon"])
        assert "not a duration" in capsys.readouterr().err
        with pytest.raises(SystemExit):
            cli.main(["tokens", "create", "--owner", "x", "--email", "not-an-address"])
        capsys.readouterr()

        rows = {row.owner: row for row in db.scalars(select(ApiToken))}
        assert rows["carol"].email == "carol@example.com" and rows["dave"].expires_at is None
        assert timedelta(days=29, hours=23) < rows["carol"].expires_at - utcnow() <= timedelta(days=30)
        code, listing, _ = run("tokens", "list")
        assert code == 0 and carol not in listing and dave not in listing
        line = next(line for line in listing.splitlines() if "carol" in line)
        assert rows["carol"].id in line and "active" in line and "carol@example.com" in line
        assert rows["carol"].expires_at.isoformat(timespec="seconds") in line
        assert "never" in next(line for line in listing.splitlines() if "dave" in line)

        assert run("tokens", "revoke", "no-such-token")[0] == 2
        assert run("tokens", "revoke", "")[0] == 2
        code, out, _ = run("tokens", "revoke", rows["dave"].id[:8])  # a prefix of the id is enough
        assert code == 0 and rows["dave"].id in out and "dave" in out
        assert run("tokens", "revoke", rows["dave"].id)[0] == 0  # again: harmless
        code, listing, _ = run("tokens", "list")
        assert "revoked" in next(line for line in listing.splitlines() if "dave" in line)
        assert run("tokens", "revoke", carol)[0] == 0  # or by the token itself
    finally:
        get_settings.cache_clear()
    for token in (carol, dave):
        r = http.get("/api/experts", headers=bearer(token))
        assert r.status_code == 401 and r.json()["error"] == "The API token has been revoked."


class OpenStream:
    """A stream read in a thread; `ended` is set when the server ends it."""

    def __init__(self, http: httpx.Client, ticket: str) -> None:
        self.text = ""
        self.ended = threading.Event()
        self.opened = threading.Event()
        self.status = 0
        self._stop = False
        self.thread = threading.Thread(target=self._read, args=(http, ticket), daemon=True)
        self.thread.start()

    def _read(self, http: httpx.Client, ticket: str) -> None:
        try:
            with http.stream("GET", STREAM, params={"ticket": ticket}, timeout=60) as response:
                self.status = response.status_code
                self.opened.set()
                for chunk in response.iter_text():
                    self.text += chunk
                    if self._stop:
                        return
        finally:
            self.opened.set()
            self.ended.set()


def test_a_revoked_tokens_stream_ends_within_30_seconds(live_api: LiveServer, db: Session) -> None:
    alice = auth.create_token(db, "alice")
    bob = auth.create_token(db, "bob")
    with httpx.Client(base_url=live_api.url, timeout=10) as http:
        a_id = create_expert(http, alice, "Alice's")
        streams = {who: OpenStream(http, new_ticket(http, token)) for who, token in (("alice", alice), ("bob", bob))}
        for stream in streams.values():
            wait_for("the stream to open", stream.opened.is_set, timeout=10)
            assert stream.status == 200
        wait_for("Alice's snapshot", lambda: a_id in streams["alice"].text, timeout=10)

        auth.revoke_token(db, alice)
        wait_for("the revoked token's stream to end", streams["alice"].ended.is_set, timeout=30)
        assert "no longer accepted" in streams["alice"].text
        # Bob's stream is still open and still delivers.
        assert not streams["bob"].ended.is_set()
        b_id = create_expert(http, bob, "Bob's")
        with Session(db.get_bind()) as session:
            ExpertProcessingProgressService(session).update_progress(b_id, stage="text_extraction", status="in_progress")
        wait_for("Bob's change", lambda: '"text_extraction"' in streams["bob"].text, timeout=10)
        # Alice cannot come back with a new ticket.
        assert http.post("/api/stream-tickets", headers=bearer(alice)).status_code == 401
        streams["bob"]._stop = True


@pytest.fixture
def quick_recheck(live_api: LiveServer) -> Iterator[LiveServer]:
    """The same server, re-checking stream tokens every 0.2 s (the default is 10 s)."""
    live_api.app.state.progress_broadcaster.token_recheck_seconds = 0.2  # type: ignore[attr-defined]
    yield live_api


def test_an_expiring_token_and_local_mode_streams_end_too(quick_recheck: LiveServer, db: Session) -> None:
    with httpx.Client(base_url=quick_recheck.url, timeout=10) as http:
        local = OpenStream(http, new_ticket(http, None))  # opened in local mode
        wait_for("the local stream to open", local.opened.is_set, timeout=10)
        alice = auth.create_token(db, "alice", expires_in=timedelta(hours=1))
        # Local mode ended with the first token: so did its operator-level stream.
        wait_for("the local-mode stream to end", local.ended.is_set, timeout=10)
        expiring = OpenStream(http, new_ticket(http, alice))
        wait_for("the stream to open", expiring.opened.is_set, timeout=10)
        db.execute(update(ApiToken).values(expires_at=utcnow() - timedelta(seconds=1)))
        db.commit()
        wait_for("the expired token's stream to end", expiring.ended.is_set, timeout=10)
