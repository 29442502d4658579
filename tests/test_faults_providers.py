"""Fault injection at the outside services, through their real SDKs over HTTP: the embedding
provider answers 429/500 for a while or for good; file storage (S3) fails transiently or for
one file. Each ends in a truthful state, nothing duplicated, nothing lost, and the expert's
history says what happened, once per episode of trouble.

Every wait is short and fixed: the stand-in sends a small Retry-After, which the openai SDK
honours, and botocore's jittered backoff is replaced by a fixed short delay (`quick_s3_retries`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from botocore.retries import standard as botocore_standard_retries
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from expert_pipeline.core.db import engine_for
from expert_pipeline.core.models import ExpertFile, ExpertProcessingProgress, FileStatus
from expert_pipeline.core.progress_service import ExpertProcessingProgressService
from expert_pipeline.core.settings import Settings
from expert_pipeline.adapters.factory import build_vector_store
from status_api.main import create_app
from tests.fixture_documents import sample_paragraphs
from tests.openai_standin import API_KEY as OPENAI_KEY
from tests.openai_standin import OpenAIStandin
from tests.pipeline_helpers import create_expert, run_ingest
from tests.s3_server import FaultProxy

pytestmark = pytest.mark.timeout(180)

PROVIDER = "The embedding provider answered"
STORAGE = "The file storage answered"


def _document(tmp_path: Path, name: str, paragraphs: int, seed: int = 0) -> Path:
    path = tmp_path / name
    path.write_text("\n\n".join(sample_paragraphs(paragraphs, seed=seed)))
    return path


def _history(settings: Settings, expert_id: str, prefix: str = "") -> list[str]:
    with Session(engine_for(settings.resolved_database_url)) as session:
        events = ExpertProcessingProgressService(session).list_events(expert_id)
        return [e.message for e in events if e.message.startswith(prefix)]


def _progress(settings: Settings, expert_id: str) -> ExpertProcessingProgress:
    with Session(engine_for(settings.resolved_database_url), expire_on_commit=False) as session:
        record = ExpertProcessingProgressService(session).get_progress(expert_id)
        assert record is not None
        return record


def _files(settings: Settings, expert_id: str) -> dict[str, ExpertFile]:
    with Session(engine_for(settings.resolved_database_url), expire_on_commit=False) as session:
        query = select(ExpertFile).where(ExpertFile.expert_id == expert_id)
        return {f.filename: f for f in session.scalars(query)}


def _retry_through_the_api(settings: Settings, expert_id: str) -> None:
    # Local mode serves loopback peers by a loopback name only: the test client says it is one.
    with TestClient(create_app(settings), base_url="http://localhost", client=("127.0.0.1", 50000)) as client:
        response = client.post(f"/api/experts/{expert_id}/retry")
        assert response.status_code == 202, response.text


def _sent(standin: OpenAIStandin, since: int = 0) -> list[str]:
    """Every text the provider embedded (answered with vectors), in order."""
    return [text for request in standin.embedding_requests[since:] for text in request.inputs]


# --- the embedding provider -------------------------------------------------------------------


@pytest.fixture
def openai_settings(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, openai_standin: OpenAIStandin
) -> Settings:
    monkeypatch.setenv("OPENAI_API_KEY", OPENAI_KEY)  # reaches Dagster as an EnvVar
    return settings.model_copy(update={
        "embedding_provider": "openai", "openai_api_key": OPENAI_KEY, "openai_base_url": openai_standin.url,
        "embedding_batch_size": 4,  # several batches (one request each) from a small document
    })


def test_provider_rate_limits_then_errors_for_a_while_are_ridden_out(
    openai_settings: Settings, openai_standin: OpenAIStandin, instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    expert_id = create_expert(openai_settings, [_document(tmp_path, "tides.txt", 6)])
    # Five failures in a row, all on the first call: within the SDK's 6 retries.
    openai_standin.fail_next(3, 429, retry_after=0.1)
    openai_standin.fail_next(2, 500, retry_after=0.05)

    assert run_ingest(openai_settings, expert_id, instance).success
    progress = _progress(openai_settings, expert_id)
    assert (progress.status, progress.error_message) == ("completed", None) and progress.total_chunks > 0
    chunks = progress.total_chunks
    sent = _sent(openai_standin)
    assert len(sent) == len(set(sent)) == chunks  # every chunk embedded, none twice
    assert build_vector_store(openai_settings).count(expert_id) == chunks
    assert [r.status for r in openai_standin.requests[:6]] == [429, 429, 429, 500, 500, 200]
    assert _history(openai_settings, expert_id, PROVIDER) == [
        f"{PROVIDER} 429 (rate limited) 3 times, 500 (server error) twice; retried successfully"
    ]


def test_trouble_recurring_batch_after_batch_is_one_episode_not_a_line_per_batch(
    openai_settings: Settings, openai_standin: OpenAIStandin, instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    expert_id = create_expert(openai_settings, [_document(tmp_path, "currents.txt", 60, seed=5)])
    openai_standin.fail_first_attempts(4, 429, retry_after=0.05)  # batches 1-4, then clean

    assert run_ingest(openai_settings, expert_id, instance).success
    chunks = _progress(openai_settings, expert_id).total_chunks
    assert chunks > 4 * 4  # more batches than the episode lasts, so a clean batch ends it
    sent = _sent(openai_standin)
    assert len(sent) == len(set(sent)) == chunks  # every chunk embedded, none twice
    assert build_vector_store(openai_settings).count(expert_id) == chunks
    # Said when it began, summed up when it was over: two lines, not four.
    assert _history(openai_settings, expert_id, PROVIDER) == [
        f"{PROVIDER} 429 (rate limited) once; retried successfully",
        f"{PROVIDER} 429 (rate limited) 4 times over 4 batches in a row; retried successfully",
    ]


def test_provider_down_for_good_fails_truthfully_and_a_retry_pays_only_for_the_rest(
    openai_settings: Settings, openai_standin: OpenAIStandin, instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    expert_id = create_expert(openai_settings, [_document(tmp_path, "harbours.txt", 60, seed=3)])
    openai_standin.outage_after(2, 500, retry_after=0.01)  # two batches through, then every request fails

    assert not run_ingest(openai_settings, expert_id, instance).success
    progress = _progress(openai_settings, expert_id)
    chunks = progress.total_chunks
    paid_before = set(_sent(openai_standin))
    assert len(paid_before) == 2 * 4 < chunks
    assert progress.status == "failed"
    assert progress.error_message == (
        "Embedding failed: the embedding provider answered 500 (server error) on all 7 attempts. "
        f"8 of {chunks} chunks were embedded and are kept; retry to embed the rest"
    )
    # Nothing stored or counted as done for the half-embedded expert.
    assert build_vector_store(openai_settings).count(expert_id) == 0
    assert {f.status for f in _files(openai_settings, expert_id).values()} == {FileStatus.PENDING}
    history = _history(openai_settings, expert_id)
    assert f"{PROVIDER} 500 (server error) 7 times; the retries ran out" in history
    assert history[-1] == f"Processing failed: {progress.error_message}"

    # The provider is back; the user presses retry.
    openai_standin.recover()
    answered = len(openai_standin.embedding_requests)
    _retry_through_the_api(openai_settings, expert_id)
    assert run_ingest(openai_settings, expert_id, instance).success

    progress = _progress(openai_settings, expert_id)
    assert (progress.status, progress.error_message, progress.total_chunks) == ("completed", None, chunks)
    paid_after = _sent(openai_standin, since=answered)
    assert not paid_before & set(paid_after)  # nothing paid for twice
    assert len(paid_before) + len(paid_after) == len(paid_before | set(paid_after)) == chunks
    assert build_vector_store(openai_settings).count(expert_id) == chunks
    assert {f.status for f in _files(openai_settings, expert_id).values()} == {FileStatus.INDEXED}
    assert len(_history(openai_settings, expert_id, PROVIDER)) == 1  # the retry ran clean


# --- file storage (S3) ------------------------------------------------------------------------


@pytest.fixture
def quick_s3_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """botocore waits rand(0, 1) x 2^n s between retries of a throttling error (SlowDown): up to
    31 s for 5 retries. Which answers it retries, and how often, stay its own; only the wait is
    fixed and short, so the tests are quick and take the same time on every run."""
    backoff = botocore_standard_retries.ExponentialBackoff
    monkeypatch.setattr(backoff, "delay_amount", lambda self, context: 0.01)


@pytest.fixture
def s3_settings(
    settings: Settings, s3_bucket: str, s3_proxy: FaultProxy, aws_credentials: Any,
    quick_s3_retries: None,
) -> Settings:
    return settings.model_copy(
        update={"file_storage": "s3", "s3_bucket": s3_bucket, "aws_endpoint_url": s3_proxy.url}
    )


def test_storage_failing_transiently_is_ridden_out(
    s3_settings: Settings, s3_proxy: FaultProxy, instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    expert_id = create_expert(s3_settings, [_document(tmp_path, "reefs.txt", 4)])
    s3_proxy.fail_next(1, 503, method="HEAD")  # download_file asks for the size first,
    s3_proxy.fail_next(2, 503, method="GET")  # then reads the object

    assert run_ingest(s3_settings, expert_id, instance).success
    progress = _progress(s3_settings, expert_id)
    assert (progress.status, progress.error_message, progress.failed_files) == ("completed", None, 0)
    reefs = _files(s3_settings, expert_id)["reefs.txt"]
    assert reefs.status == FileStatus.INDEXED and reefs.chunks == progress.total_chunks > 0
    assert build_vector_store(s3_settings).count(expert_id) == progress.total_chunks
    reads = [(r.method, r.status) for r in s3_proxy.log if r.method in ("HEAD", "GET")]
    assert reads == [("HEAD", 503), ("HEAD", 200), ("GET", 503), ("GET", 503), ("GET", 200)]
    assert _history(s3_settings, expert_id, STORAGE) == [
        f"{STORAGE} 503 (unavailable) 3 times; retried successfully (fetching reefs.txt)"
    ]


def test_storage_failing_for_one_file_fails_it_alone_until_a_retry(
    s3_settings: Settings, s3_proxy: FaultProxy, instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    expert_id = create_expert(
        s3_settings, [_document(tmp_path, "kelp.txt", 4, seed=1), _document(tmp_path, "storms.txt", 4, seed=2)]
    )
    s3_proxy.fail_reads_of("storms.txt", 503)

    assert run_ingest(s3_settings, expert_id, instance).success
    files = _files(s3_settings, expert_id)
    assert files["kelp.txt"].status == FileStatus.INDEXED
    reason = "could not be fetched from storage: it answered 503 (unavailable) on all 6 attempts"
    assert (files["storms.txt"].status, files["storms.txt"].error_kind) == (FileStatus.FAILED, "fetch_failed")
    assert files["storms.txt"].error_message == reason
    progress = _progress(s3_settings, expert_id)
    assert (progress.status, progress.failed_files) == ("completed", 1)  # completed, one file failed
    vectors_first = build_vector_store(s3_settings).count(expert_id)
    assert vectors_first == files["kelp.txt"].chunks > 0
    history = _history(s3_settings, expert_id)
    trouble = f"{STORAGE} 503 (unavailable) 6 times; the retries ran out (fetching storms.txt)"
    assert history.index(trouble) + 1 == history.index(f"storms.txt failed: {reason}")
    assert _history(s3_settings, expert_id, STORAGE) == [trouble]

    s3_proxy.heal()
    _retry_through_the_api(s3_settings, expert_id)
    assert run_ingest(s3_settings, expert_id, instance).success
    files = _files(s3_settings, expert_id)
    assert {f.status for f in files.values()} == {FileStatus.INDEXED}
    assert files["storms.txt"].error_message is None
    progress = _progress(s3_settings, expert_id)
    assert (progress.status, progress.failed_files) == ("completed", 0)
    vectors = build_vector_store(s3_settings).count(expert_id)
    assert vectors == sum(f.chunks or 0 for f in files.values()) > vectors_first  # kelp's vectors not doubled
    assert "storms.txt indexed" in _history(s3_settings, expert_id)
