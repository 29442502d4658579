"""The documented progress endpoints over real HTTP, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from expert_pipeline.core.db import engine_for, make_engine
from expert_pipeline.core.progress_service import ExpertProcessingProgressService
from expert_pipeline.core.progress_public import EXTRA_FIELDS
from expert_pipeline.core.settings import Settings
from tests.conftest import SHARED_DIR, LiveServer

SPEC_EXAMPLE = json.loads((Path(__file__).parent / "data" / "spec_progress_example.json").read_text())
ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")


def _seed_spec_like_record(engine: Engine, expert_id: str = "expert-uuid") -> None:
    with Session(engine) as session:
        service = ExpertProcessingProgressService(session)
        service.create_progress_record(expert_id=expert_id, agent_id="agent_xxx", total_files=1)
        service.update_progress(
            expert_id=expert_id, stage="embedding", current_file="document.pdf", current_file_index=0,
            current_batch=45, total_batches=100, current_chunk=450, total_chunks=1000,
            progress_percentage=45.0,
            details={"filename": "document.pdf", "batch": "45/100", "chunks": "450/1000"},
        )


def _type_shape(value: object) -> object:
    """Map a JSON value to its type, recursing into objects (null stays null)."""
    if isinstance(value, dict):
        return {k: _type_shape(v) for k, v in value.items()}
    return type(value).__name__


def test_progress_matches_the_spec_example_exactly(http: httpx.Client, engine: Engine) -> None:
    _seed_spec_like_record(engine)
    response = http.get("/api/experts/expert-uuid/progress")
    assert response.status_code == 200
    body = response.json()
    assert list(body) == list(SPEC_EXAMPLE)
    # Every key of the specification, in its order; then only the documented extras.
    spec_keys = list(SPEC_EXAMPLE["progress"])
    assert list(body["progress"])[: len(spec_keys)] == spec_keys
    assert tuple(list(body["progress"])[len(spec_keys) :]) == EXTRA_FIELDS
    got = {k: v for k, v in body["progress"].items() if k in spec_keys}
    want = dict(SPEC_EXAMPLE["progress"])
    # The spec shows the run still going; only these differ by nature (ids and times).
    for key in ("id", "expert_id", "started_at", "updated_at"):
        assert isinstance(got.pop(key), str) and isinstance(want.pop(key), str)
    assert got == want  # same values, hence same types, including null completed_at
    for key in ("started_at", "updated_at"):
        assert ISO_UTC.match(body["progress"][key]), body["progress"][key]
        assert datetime.fromisoformat(body["progress"][key]).tzinfo is not None


def test_spec_example_copy_is_current() -> None:
    spec = SHARED_DIR / "spec" / "expert-processing-progress.md"
    if not spec.exists():
        pytest.skip(f"specification not present at {spec}")
    text = spec.read_text()
    block = re.search(r'Response:\n```json\n(\{\n  "success": true,\n  "progress".*?\n\})\n```', text, re.S)
    assert block is not None
    assert json.loads(block.group(1)) == SPEC_EXAMPLE


def test_active_lists_running_and_pending(http: httpx.Client, engine: Engine) -> None:
    with Session(engine) as session:
        service = ExpertProcessingProgressService(session)
        for expert_id in ("a", "b", "c"):
            service.create_progress_record(expert_id=expert_id, total_files=1)
        service.update_progress(expert_id="b", stage="text_extraction")
        service.mark_completed(expert_id="c")
    body = http.get("/api/experts/progress/active").json()
    assert body["success"] is True and body["count"] == 2
    assert sorted(r["expert_id"] for r in body["progress_records"]) == ["a", "b"]
    assert all(list(r)[:20] == list(SPEC_EXAMPLE["progress"]) for r in body["progress_records"])
    positions = {r["expert_id"]: r["queue_position"] for r in body["progress_records"]}
    assert positions == {"a": 1, "b": None}  # b is running; a waits first in line


def test_active_is_empty_list_when_idle(http: httpx.Client) -> None:
    assert http.get("/api/experts/progress/active").json() == {"success": True, "count": 0, "progress_records": []}


def test_delete_removes_record_and_history(http: httpx.Client, engine: Engine) -> None:
    _seed_spec_like_record(engine, "e1")
    assert http.delete("/api/experts/e1/progress").json() == {"success": True}
    missing = http.get("/api/experts/e1/progress")
    assert missing.status_code == 404
    assert missing.json() == {"success": False, "error": "No progress record for expert 'e1'"}
    assert http.get("/api/experts/e1/progress/events").status_code == 404
    assert http.delete("/api/experts/e1/progress").status_code == 404


def test_events_oldest_first(http: httpx.Client, engine: Engine) -> None:
    _seed_spec_like_record(engine, "e1")
    with Session(engine) as session:
        ExpertProcessingProgressService(session).mark_completed(expert_id="e1")
    body = http.get("/api/experts/e1/progress/events").json()
    assert body["success"] is True
    assert [e["stage"] for e in body["events"]] == ["file_processing", "embedding", "complete"]
    assert [e["status"] for e in body["events"]] == ["pending", "in_progress", "completed"]
    assert all(ISO_UTC.match(e["created_at"]) for e in body["events"])


@pytest.mark.parametrize("bad_id", ["bad id", "a" * 200, "-leading-dash", "semi;colon"])
def test_malformed_ids_get_a_4xx_with_a_message(http: httpx.Client, bad_id: str) -> None:
    response = http.get(f"/api/experts/{bad_id}/progress")
    assert response.status_code == 422
    body = response.json()
    assert body["success"] is False and "expert_id" in body["error"]


def test_unknown_route_is_json_404(http: httpx.Client) -> None:
    response = http.get("/api/nothing-here")
    assert response.status_code == 404 and response.json()["success"] is False


def test_health_reports_database(http: httpx.Client) -> None:
    body = http.get("/healthz").json()
    assert (body["status"], body["database"], body["pipeline"]["status"]) == ("ok", "ok", "unknown")


def test_database_outage_is_503_with_message(http: httpx.Client, live_api: object) -> None:
    app = live_api.app  # type: ignore[attr-defined]
    good = app.state.engine
    app.state.engine = make_engine("postgresql+psycopg2://nobody@127.0.0.1:1/none?connect_timeout=2")
    try:
        response = http.get("/api/experts/e1/progress")
        assert response.status_code == 503
        assert response.json() == {
            "success": False, "error": "The progress database is unavailable; try again shortly.",
        }
        health = http.get("/healthz")
        assert health.status_code == 503 and health.json()["status"] == "unavailable"
        assert "Traceback" not in response.text
    finally:
        app.state.engine = good
    assert http.get("/healthz").status_code == 200


def test_openapi_documents_the_endpoints(http: httpx.Client) -> None:
    paths = http.get("/openapi.json").json()["paths"]
    for path in (
        "/api/experts/{expert_id}/progress",
        "/api/experts/progress/active",
        "/api/experts/{expert_id}/progress/events",
        "/healthz",
    ):
        assert path in paths
    assert "delete" in paths["/api/experts/{expert_id}/progress"]
    assert http.get("/docs").status_code == 200


def test_many_concurrent_requests_all_succeed(live_api: LiveServer, settings: Settings) -> None:
    # More requests in flight than worker threads and pooled connections: admission control
    # queues them on the event loop instead of letting the pool time out (a 503 after 30 s).
    import asyncio

    with Session(engine_for(settings.resolved_database_url)) as session:
        ExpertProcessingProgressService(session).create_progress_record(expert_id="busy-expert", total_files=1)

    async def burst() -> list[int]:
        limits = httpx.Limits(max_connections=300, max_keepalive_connections=300)
        async with httpx.AsyncClient(base_url=live_api.url, timeout=60, limits=limits) as client:
            responses = await asyncio.gather(*[client.get("/api/experts/busy-expert/progress") for _ in range(300)])
        return [r.status_code for r in responses]

    assert set(asyncio.run(burst())) == {200}
