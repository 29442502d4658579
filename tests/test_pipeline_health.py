"""Nothing waits silently: a pending expert nothing picks up says why, and /healthz says so too."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session

from expert_pipeline.core.db import engine_for
from expert_pipeline.core.models import ExpertProcessingProgress, PipelineHeartbeat, utcnow
from expert_pipeline.core.pipeline_health import BEAT_STALE_SECONDS, record_beat
from expert_pipeline.core.progress_service import ExpertProcessingProgressService
from expert_pipeline.core.settings import Settings


@pytest.fixture
def settings(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.delenv("DAGSTER_HOME", raising=False)  # no Dagster instance to consult here
    return settings.model_copy(update={"stall_after_seconds": 60})


def _queue(settings: Settings, expert_id: str, waited_seconds: float) -> None:
    with Session(engine_for(settings.resolved_database_url)) as session:
        ExpertProcessingProgressService(session).create_progress_record(expert_id, total_files=1)
        session.execute(
            update(ExpertProcessingProgress)
            .where(ExpertProcessingProgress.expert_id == expert_id)
            .values(started_at=utcnow() - timedelta(seconds=waited_seconds))
        )
        session.commit()


def _beat(settings: Settings, seconds_ago: float, queued_runs: int = 0) -> None:
    with Session(engine_for(settings.resolved_database_url)) as session:
        record_beat(session, {"queued_runs": queued_runs})
        session.execute(update(PipelineHeartbeat).values(seen_at=utcnow() - timedelta(seconds=seconds_ago)))
        session.commit()


def test_pending_expert_with_no_pipeline_is_stalled_with_the_reason(settings: Settings, http: httpx.Client) -> None:
    _queue(settings, "waiting", waited_seconds=61)
    _queue(settings, "just-queued", waited_seconds=1)
    waiting = http.get("/api/experts/waiting/progress").json()["progress"]
    assert waiting["status"] == "pending" and waiting["stalled"] is True
    assert waiting["stalled_reason"].startswith("No pipeline worker has taken this: the Dagster daemon has never run")
    fresh = http.get("/api/experts/just-queued/progress").json()["progress"]
    assert (fresh["stalled"], fresh["stalled_reason"]) == (False, None)

    health = http.get("/healthz")
    assert health.status_code == 503
    pipeline = health.json()["pipeline"]
    assert (pipeline["status"], pipeline["stalled_experts"]) == ("unknown", 1)
    assert "No pipeline worker" in pipeline["reason"]


def test_a_pipeline_that_stopped_beating_is_down(settings: Settings, http: httpx.Client) -> None:
    _beat(settings, seconds_ago=BEAT_STALE_SECONDS + 90)
    _queue(settings, "waiting", waited_seconds=61)
    progress = http.get("/api/experts/waiting/progress").json()["progress"]
    assert progress["stalled"] is True
    assert "the Dagster daemon is not running, or the pipeline's code location failed to load" in progress["stalled_reason"]
    health = http.get("/healthz")
    assert health.status_code == 503 and health.json()["pipeline"]["status"] == "down"


def test_a_beating_pipeline_is_ok_and_a_queue_is_not_a_stall(settings: Settings, http: httpx.Client) -> None:
    _beat(settings, seconds_ago=1, queued_runs=3)
    _queue(settings, "waiting", waited_seconds=600)  # behind others in the run queue, but taken
    progress = http.get("/api/experts/waiting/progress").json()["progress"]
    assert (progress["stalled"], progress["queue_position"]) == (False, 1)
    health = http.get("/healthz")
    assert health.status_code == 200
    pipeline = health.json()["pipeline"]
    assert (pipeline["status"], pipeline["queued_runs"], pipeline["reason"]) == ("ok", 3, None)


def test_the_probe_loads_the_code_location_as_dagster_does(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Importing the definitions module builds nothing (they are lazy): the probe must load them."""
    from status_api.pipeline_probe import code_location_error

    monkeypatch.setenv("EXPERT_PIPELINE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    monkeypatch.delenv("DATABASE_URL", raising=False)
    assert code_location_error() is None
    monkeypatch.setenv("FILE_STORAGE", "s3")  # selected, but no bucket: the location cannot load
    monkeypatch.delenv("S3_BUCKET", raising=False)
    error = code_location_error()
    assert error is not None and "Configuration is incomplete" in error and "file storage" in error
