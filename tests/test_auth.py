"""API tokens and owner scoping over real HTTP (SQLite and PostgreSQL)."""

from __future__ import annotations

import hashlib
import uuid

import httpx
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, select, text
from sqlalchemy.orm import Session

from expert_pipeline.core import auth
from expert_pipeline.core.models import ApiToken, Base
from expert_pipeline.core.progress_service import ExpertProcessingProgressService
from expert_pipeline.core.settings import Settings
from tests.streams import first_progress_chunk

MISSING = "missing-expert-1"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def create(http: httpx.Client, token: str | None, name: str) -> str:
    headers = bearer(token) if token else {}
    r = http.post("/api/experts", data={"name": name}, files={"files": ("a.txt", b"hello world", "text/plain")},
                  headers=headers)
    assert r.status_code == 201, r.text
    return str(r.json()["expert"]["id"])


def ticket(http: httpx.Client, token: str) -> dict[str, str]:
    """Query parameters that open one stream as `token`'s owner (a single-use stream ticket)."""
    r = http.post("/api/stream-tickets", headers=bearer(token))
    assert r.status_code == 200, r.text
    return {"ticket": r.json()["ticket"]}


def same_as_missing(a: httpx.Response, b: httpx.Response, expert_id: str) -> None:
    """`a` (someone else's expert) answers exactly as `b` (no such expert), bar the id."""
    assert a.status_code == b.status_code == 404, (a.text, b.text)
    assert a.json()["error"].replace(expert_id, "ID") == b.json()["error"].replace(MISSING, "ID")
    assert a.json()["success"] is False


def test_local_mode_needs_no_token(http: httpx.Client, db: Session) -> None:
    assert not auth.any_tokens(db)
    expert_id = create(http, None, "Local")
    assert http.get("/api/experts").json()["count"] == 1
    assert http.get(f"/api/experts/{expert_id}/progress").status_code == 200
    # A stale token left in a browser is no reason to refuse a local-mode request.
    assert http.get("/api/experts", headers=bearer("ep_stale")).status_code == 200
    assert http.get("/api/experts", headers={"Authorization": "Basic abc"}).status_code == 200
    assert http.get("/healthz").status_code == 200


def test_tokens_are_required_once_one_exists(http: httpx.Client, db: Session) -> None:
    token = auth.create_token(db, "alice")
    for path in ("/api/experts", "/api/experts/progress/active", "/api/experts/progress/stats",
                 f"/api/experts/{MISSING}/progress", "/api/experts/progress/stream"):
        for headers in ({}, bearer("ep_wrong"), {"Authorization": "Basic abc"}):
            r = http.get(path, headers=headers)
            assert r.status_code == 401, (path, headers, r.text)
            assert r.json()["success"] is False and r.json()["error"]
            assert r.headers["www-authenticate"] == "Bearer"
    # A token in the URL is never accepted, not even by the streams (tickets are, see below).
    assert http.get("/api/experts", params={"access_token": token}).status_code == 401
    assert http.get("/api/experts/progress/stream", params={"access_token": token}).status_code == 401
    assert http.get("/api/experts", headers=bearer(token)).status_code == 200
    # Public: health, docs, the OpenAPI document and the dashboard's files.
    for path in ("/healthz", "/docs", "/openapi.json", "/dashboard/", "/dashboard/app.js"):
        assert http.get(path).status_code == 200, path
    # The token is stored hashed only; the last use is recorded.
    rows = db.execute(select(ApiToken.token_sha256, ApiToken.owner, ApiToken.last_used_at)).all()
    assert [(r[0], r[1]) for r in rows] == [(hashlib.sha256(token.encode()).hexdigest(), "alice")]
    assert rows[0][2] is not None
    dumped = " ".join(str(v) for row in db.execute(text("SELECT * FROM api_tokens")).all() for v in row)
    assert token not in dumped and token.startswith("ep_")


def test_owners_only_see_and_act_on_their_own_experts(http: httpx.Client, db: Session, engine: Engine) -> None:
    alice = auth.create_token(db, "alice")
    bob = auth.create_token(db, "bob")
    root = auth.create_token(db, "ops", operator=True)
    a_id = create(http, alice, "Alice's expert")
    b_id = create(http, bob, "Bob's expert")
    # A progress row without an expert row belongs to nobody: operators only.
    orphan = f"orphan-{uuid.uuid4().hex[:8]}"
    ExpertProcessingProgressService(db).create_progress_record(expert_id=orphan, total_files=1)

    def ids(path: str, token: str, key: str, field: str) -> set[str]:
        r = http.get(path, headers=bearer(token))
        assert r.status_code == 200, r.text
        return {item[field] for item in r.json()[key]}

    assert ids("/api/experts", alice, "experts", "id") == {a_id}
    assert ids("/api/experts", bob, "experts", "id") == {b_id}
    assert ids("/api/experts", root, "experts", "id") == {a_id, b_id}
    assert ids("/api/experts/progress/active", bob, "progress_records", "expert_id") == {b_id}
    assert ids("/api/experts/progress/active", root, "progress_records", "expert_id") == {a_id, b_id, orphan}
    stats = http.get("/api/experts/progress/stats", headers=bearer(bob)).json()
    assert stats["counts_by_status"]["pending"] == 1
    assert http.get("/api/experts/progress/stats", headers=bearer(root)).json()["counts_by_status"]["pending"] == 3

    # Bob cannot reach Alice's expert (or the orphan): every route answers like a missing expert.
    requests = [
        ("GET", "/api/experts/{id}", {}),
        ("GET", "/api/experts/{id}/progress", {}),
        ("GET", "/api/experts/{id}/progress/events", {}),
        ("GET", "/api/experts/{id}/progress/stream", {}),
        ("POST", "/api/experts/{id}/cancel", {}),
        ("POST", "/api/experts/{id}/retry", {}),
        ("POST", "/api/experts/{id}/files", {"files": {"files": ("b.txt", b"more", "text/plain")}}),
        ("POST", "/api/experts/{id}/chat", {"json": {"message": "hello?"}}),
        ("DELETE", "/api/experts/{id}/progress", {}),
        ("DELETE", "/api/experts/{id}", {}),
    ]
    for method, path, kwargs in requests:
        for hidden in (a_id, orphan) if "progress" in path or "cancel" in path else (a_id,):
            theirs = http.request(method, path.format(id=hidden), headers=bearer(bob), **kwargs)
            missing = http.request(method, path.format(id=MISSING), headers=bearer(bob), **kwargs)
            same_as_missing(theirs, missing, hidden)
    # The stream also opens with a stream ticket (EventSource sends no headers).
    theirs = http.get(f"/api/experts/{a_id}/progress/stream", params=ticket(http, bob))
    missing = http.get(f"/api/experts/{MISSING}/progress/stream", params=ticket(http, bob))
    same_as_missing(theirs, missing, a_id)

    # Nothing was changed by Bob's attempts.
    r = http.get(f"/api/experts/{a_id}", headers=bearer(alice))
    assert r.status_code == 200 and len(r.json()["expert"]["files"]) == 1
    assert r.json()["expert"]["progress"]["status"] == "pending"

    # The all-experts stream only carries the caller's experts; operators get all.
    mine = first_progress_chunk(http, "/api/experts/progress/stream", params=ticket(http, bob))
    assert b_id in mine and a_id not in mine and orphan not in mine
    everything = first_progress_chunk(http, "/api/experts/progress/stream", headers=bearer(root))
    assert a_id in everything and b_id in everything and orphan in everything
    one = first_progress_chunk(http, f"/api/experts/{a_id}/progress/stream", params=ticket(http, alice))
    assert a_id in one

    # Owners and operators act on what they see.
    assert http.post(f"/api/experts/{a_id}/chat", json={"message": "hi"}, headers=bearer(alice)).status_code == 409
    assert http.post(f"/api/experts/{a_id}/cancel", headers=bearer(alice)).status_code == 200
    assert http.post(f"/api/experts/{a_id}/retry", headers=bearer(root)).status_code == 202
    assert http.post(f"/api/experts/{b_id}/cancel", headers=bearer(root)).status_code == 200
    assert http.delete(f"/api/experts/{b_id}", headers=bearer(root)).status_code == 200
    assert http.delete(f"/api/experts/{orphan}/progress", headers=bearer(root)).status_code == 200
    assert http.delete(f"/api/experts/{a_id}", headers=bearer(alice)).status_code == 200
    assert http.get("/api/experts", headers=bearer(root)).json()["count"] == 0


def test_stream_filters_changes_per_subscriber(live_api: object, http: httpx.Client, db: Session) -> None:
    """Changes after the snapshot are filtered too (the broadcaster's per-subscriber check)."""
    alice = auth.create_token(db, "alice")
    bob = auth.create_token(db, "bob")
    b_id = create(http, bob, "Bob's")
    with http.stream("GET", "/api/experts/progress/stream", params=ticket(http, bob), timeout=15) as response:
        chunks = response.iter_text()
        seen = ""
        while b_id not in seen:
            seen += next(chunks)
        a_id = create(http, alice, "Alice's")  # a change Bob must not get
        service = ExpertProcessingProgressService(db)
        service.update_progress(b_id, stage="text_extraction", status="in_progress")
        seen = ""
        while '"text_extraction"' not in seen:
            seen += next(chunks)
        assert a_id not in seen


def test_cli_creates_a_working_token(
    http: httpx.Client, settings: Settings, database_url: str, tmp_path: object,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], db: Session,
) -> None:
    from expert_pipeline import cli
    from expert_pipeline.core.settings import get_settings

    monkeypatch.setenv("EXPERT_PIPELINE_HOME", str(settings.expert_pipeline_home))
    monkeypatch.setenv("DATABASE_URL", database_url)
    get_settings.cache_clear()
    try:
        assert cli.main(["tokens", "create", "--owner", "carol"]) == 0
        out = capsys.readouterr().out
        tokens = [line for line in out.splitlines() if line.startswith("ep_")]
        assert len(tokens) == 1 and "will not be shown again" in out
        token = tokens[0]
        assert cli.main(["tokens", "list"]) == 0
        listing = capsys.readouterr().out
        assert "carol" in listing and token not in listing
    finally:
        get_settings.cache_clear()
    assert http.get("/api/experts").status_code == 401
    assert http.get("/api/experts", headers=bearer(token)).status_code == 200
    assert db.scalar(select(ApiToken.owner)) == "carol"


def test_launcher_binds_to_localhost_in_local_mode(database_url: str, db: Session) -> None:
    from expert_pipeline.cli.up import api_host

    assert api_host("0.0.0.0", database_url) == "127.0.0.1"
    auth.create_token(db, "alice")
    assert api_host("0.0.0.0", database_url) == "0.0.0.0"


def test_migration_matches_the_model(engine: Engine) -> None:
    with engine.connect() as connection:
        diffs = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert [d for d in diffs if "api_tokens" in repr(d) or "'owner'" in repr(d) or "experts_owner" in repr(d)] == []
