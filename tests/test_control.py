"""Control and insight: cancel, retry and add files without re-paying, ETA, stalls, queue, stats."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

import dagster as dg
import httpx
import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session

from expert_pipeline.core.db import engine_for
from expert_pipeline.core.models import ExpertProcessingProgress, utcnow
from expert_pipeline.core.progress_service import ExpertProcessingProgressService, RunNotWanted
from expert_pipeline.core.settings import Settings
from expert_pipeline.ingest.progress_plan import RateEstimator
from expert_pipeline.adapters.factory import build_vector_store
from expert_pipeline.adapters.embedder import LocalEmbedder
from tests.fixture_documents import make_pdf, sample_paragraphs
from tests.pipeline_helpers import ProgressWatcher, create_expert, run_ingest
from tests.waiting import wait_for

CALLS: dict[str, int] = {"texts": 0, "requests": 0}
FAIL_AFTER: dict[str, int | None] = {"requests": None}


class CountingEmbedder(LocalEmbedder):
    """The real local model, counting what is sent to it; can fail like a provider outage."""

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        limit = FAIL_AFTER["requests"]
        if limit is not None and CALLS["requests"] >= limit:
            raise ConnectionError("embedding provider unavailable (HTTP 503)")
        CALLS["requests"] += 1
        CALLS["texts"] += len(texts)
        return super().embed(texts)


@pytest.fixture(autouse=True)
def reset_counters() -> None:
    CALLS.update(texts=0, requests=0)
    FAIL_AFTER["requests"] = None


@pytest.fixture
def small_batches(settings: Settings) -> Settings:
    return settings.model_copy(update={"embedding_batch_size": 2, "progress_min_write_interval_seconds": 0.0})


def _run(settings: Settings, expert_id: str, instance: dg.DagsterInstance) -> dg.ExecuteInProcessResult:
    return run_ingest(settings, expert_id, instance, resources={"embedder": CountingEmbedder()})


def _record(settings: Settings, expert_id: str) -> ExpertProcessingProgress:
    with Session(engine_for(settings.resolved_database_url), expire_on_commit=False) as session:
        record = ExpertProcessingProgressService(session).get_progress(expert_id)
    assert record is not None
    return record


def _doc(tmp_path: Path, name: str, pages: int, seed: int) -> Path:
    return make_pdf(tmp_path / name, ["\n\n".join(sample_paragraphs(5, seed=seed * 100 + p)) for p in range(pages)])


def test_retry_after_mid_embedding_failure_reuses_paid_embeddings(
    small_batches: Settings, instance: dg.DagsterInstance, tmp_path: Path, live_api: object
) -> None:
    # Reference: how many provider requests a full ingest of such a document takes.
    reference = create_expert(small_batches, [_doc(tmp_path, "big.pdf", 6, 1)], name="reference")
    assert _run(small_batches, reference, instance).success
    full_requests = CALLS["requests"]
    assert full_requests >= 5

    CALLS.update(texts=0, requests=0)
    # Same text as the reference is cached now, so use fresh text for the failing expert.
    expert_id = create_expert(small_batches, [_doc(tmp_path, "other.pdf", 6, 2)])
    FAIL_AFTER["requests"] = int(full_requests * 0.6)
    failed = _run(small_batches, expert_id, instance)
    assert not failed.success
    record = _record(small_batches, expert_id)
    # Users read a plain message; the raw cause is kept for operators in the history.
    assert record.status == "failed" and (record.error_message or "").startswith("Embedding failed unexpectedly")
    assert "ConnectionError" not in (record.error_message or "")
    with Session(engine_for(small_batches.resolved_database_url)) as session:
        details = [e.data.get("detail") for e in ExpertProcessingProgressService(session).list_events(expert_id)]
    assert "ConnectionError: embedding provider unavailable (HTTP 503)" in details
    paid_before_failure = CALLS["requests"]
    texts_before_failure = CALLS["texts"]

    FAIL_AFTER["requests"] = None
    CALLS.update(texts=0, requests=0)
    with httpx.Client(base_url=live_api.url) as client:  # type: ignore[attr-defined]
        retried = client.post(f"/api/experts/{expert_id}/retry")
        assert retried.status_code == 202 and retried.json()["progress"]["status"] == "pending"
        assert client.post(f"/api/experts/{expert_id}/retry").status_code == 409  # already queued
    assert _run(small_batches, expert_id, instance).success
    record = _record(small_batches, expert_id)
    assert record.status == "completed"
    assert build_vector_store(small_batches).count(expert_id) == record.total_chunks
    # Only the batches the failed run never paid for are sent again: nothing twice.
    assert CALLS["texts"] + texts_before_failure == record.total_chunks
    assert CALLS["requests"] <= 0.4 * full_requests + 1

    # Re-ingesting unchanged files makes no embedding call at all.
    CALLS.update(texts=0, requests=0)
    with httpx.Client(base_url=live_api.url) as client:  # type: ignore[attr-defined]
        assert client.post(f"/api/experts/{expert_id}/retry").status_code == 202
    assert _run(small_batches, expert_id, instance).success
    assert CALLS["requests"] == 0
    assert build_vector_store(small_batches).count(expert_id) == record.total_chunks


def test_adding_files_ingests_only_the_new_ones(
    small_batches: Settings, instance: dg.DagsterInstance, tmp_path: Path, live_api: object
) -> None:
    expert_id = create_expert(small_batches, [_doc(tmp_path, "first.pdf", 2, 3)])
    assert _run(small_batches, expert_id, instance).success
    first_chunks = _record(small_batches, expert_id).total_chunks

    CALLS.update(texts=0, requests=0)
    second = _doc(tmp_path, "second.pdf", 1, 4)
    with httpx.Client(base_url=live_api.url) as client:  # type: ignore[attr-defined]
        added = client.post(f"/api/experts/{expert_id}/files", files={"files": ("second.pdf", second.read_bytes())})
        assert added.status_code == 202, added.text
        assert [f["filename"] for f in added.json()["expert"]["files"]] == ["first.pdf", "second.pdf"]
        assert added.json()["progress"]["status"] == "pending"
    assert _run(small_batches, expert_id, instance).success
    record = _record(small_batches, expert_id)
    assert (record.status, record.processed_files, record.total_files) == ("completed", 2, 2)
    new_chunks = record.total_chunks  # this run's chunks: the new file only
    assert CALLS["texts"] == new_chunks > 0
    assert build_vector_store(small_batches).count(expert_id) == first_chunks + new_chunks


def test_cancel_stops_a_running_ingest(
    small_batches: Settings, instance: dg.DagsterInstance, tmp_path: Path, live_api: object
) -> None:
    settings = small_batches.model_copy(update={"embedding_batch_size": 1})
    expert_id = create_expert(settings, [_doc(tmp_path, "long.pdf", 6, 5)])
    outcome: dict[str, dg.ExecuteInProcessResult] = {}
    worker = threading.Thread(target=lambda: outcome.setdefault("result", _run(settings, expert_id, instance)))
    worker.start()
    wait_for("the run to be embedding", lambda: _record(settings, expert_id).stage == "embedding",
             timeout=60, interval=0.05)
    with httpx.Client(base_url=live_api.url) as client:  # type: ignore[attr-defined]
        cancelled = client.post(f"/api/experts/{expert_id}/cancel")
        assert cancelled.status_code == 200 and cancelled.json()["progress"]["status"] == "cancelled"
        assert client.post(f"/api/experts/{expert_id}/cancel").status_code == 409
        assert client.post("/api/experts/nobody/cancel").status_code == 404
    worker.join(timeout=60)
    assert not worker.is_alive(), "the cancelled run did not stop within 60 s"
    assert not outcome["result"].success
    record = _record(settings, expert_id)
    assert record.status == "cancelled" and record.error_message == "Cancelled by user"
    assert CALLS["texts"] < record.total_chunks  # it stopped early, not after all the work
    with Session(engine_for(settings.resolved_database_url)) as session:
        events = ExpertProcessingProgressService(session).list_events(expert_id)
    assert events[-1].status == "cancelled"


def test_a_cancelled_request_is_never_started(settings: Settings, instance: dg.DagsterInstance, tmp_path: Path) -> None:
    expert_id = create_expert(settings, [_doc(tmp_path, "a.pdf", 1, 6)])
    with Session(engine_for(settings.resolved_database_url)) as session:
        service = ExpertProcessingProgressService(session)
        service.mark_cancelled(expert_id, "Cancelled by user")
        with pytest.raises(RunNotWanted):
            service.start_run(expert_id, run_id="late-run")
    assert not _run(settings, expert_id, instance).success
    assert _record(settings, expert_id).status == "cancelled"
    assert CALLS["requests"] == 0


def test_eta_appears_and_reaches_zero(small_batches: Settings, instance: dg.DagsterInstance, tmp_path: Path) -> None:
    expert_id = create_expert(small_batches, [_doc(tmp_path, "eta.pdf", 6, 7)])
    seen: list[tuple[str, float | None]] = []
    watcher = ProgressWatcher(small_batches, expert_id)
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            record = _record(small_batches, expert_id)
            seen.append((record.stage, record.eta_seconds))
            time.sleep(0.05)

    thread = threading.Thread(target=poll)
    thread.start()
    with watcher.watching():
        assert _run(small_batches, expert_id, instance).success
    stop.set()
    thread.join()
    assert all(eta is None for stage, eta in seen if stage in ("file_processing", "text_extraction"))
    embedding_etas = [eta for stage, eta in seen if stage == "embedding" and eta is not None]
    assert embedding_etas and all(eta >= 0 for eta in embedding_etas)
    record = _record(small_batches, expert_id)
    assert record.eta_seconds == 0.0 and (record.chunks_per_second or 0) > 0


def test_chunks_found_in_the_cache_do_not_make_the_eta_promise_seconds() -> None:
    # Chunks embedded while reading (or by an earlier run) come back at once; the rate, and the
    # ETA of the chunks still to embed, count only time spent embedding.
    rate = RateEstimator()
    rate.observe(0.0, 0)
    rate.pause(0.2)  # 120 chunks from the cache in 0.2 s
    for second in range(1, 5):
        rate.observe(0.2 + second, 10 * second)  # then 10 chunks a second
    assert rate.rate == pytest.approx(10.0)
    assert rate.eta(50) == pytest.approx(5.0)


def test_stalled_and_queue_position_are_visible(settings: Settings, http: httpx.Client) -> None:
    with Session(engine_for(settings.resolved_database_url)) as session:
        service = ExpertProcessingProgressService(session)
        for expert_id in ("first", "second", "busy"):
            service.create_progress_record(expert_id=expert_id)
        service.start_run("busy", run_id="r1")
        session.execute(
            update(ExpertProcessingProgress)
            .where(ExpertProcessingProgress.expert_id == "busy")
            .values(heartbeat_at=utcnow() - timedelta(seconds=settings.stall_after_seconds + 5),
                    updated_at=utcnow() - timedelta(seconds=settings.stall_after_seconds + 5))
        )
        session.commit()
    busy = http.get("/api/experts/busy/progress").json()["progress"]
    assert busy["stalled"] is True and busy["heartbeat_at"] is not None
    assert http.get("/api/experts/first/progress").json()["progress"]["queue_position"] == 1
    assert http.get("/api/experts/second/progress").json()["progress"]["queue_position"] == 2


def test_stats_summarise_a_window(
    small_batches: Settings, instance: dg.DagsterInstance, tmp_path: Path, http: httpx.Client
) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    expert_id = create_expert(small_batches, [_doc(tmp_path, "s.pdf", 1, 8), empty])
    assert _run(small_batches, expert_id, instance).success
    stats = http.get("/api/experts/progress/stats", params={"window_hours": 1}).json()
    assert stats["success"] is True
    assert stats["counts_by_status"]["completed"] == 1 and stats["counts_by_status"]["failed"] == 0
    assert stats["seconds_per_stage"]["embedding"]["count"] == 1
    assert stats["seconds_per_stage"]["embedding"]["p50"] >= 0
    assert stats["throughput_chunks_per_second"] > 0
    assert stats["failed_files_by_kind"] == {"empty": 1}
    assert http.get("/api/experts/progress/stats", params={"window_hours": 0}).status_code == 422
