"""Fault injection at the outside services, through their real SDKs over HTTP: the embedding
provider answers 429/500 for a while or for good; file storage (S3) fails transiently or for
one file. Each ends in a truthful state, nothing duplicated, nothing lost, and the expert's
history says what happened."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from expert_pipeline.core.db import engine_for
from expert_pipeline.core.models import ExpertFile
from expert_pipeline.core.progress_service import ExpertProcessingProgressService
from expert_pipeline.core.settings import Settings
from expert_pipeline.parts import build_vector_store
from status_api.main import create_app
from tests.fixture_documents import sample_paragraphs
from tests.openai_standin import API_KEY as OPENAI_KEY
from tests.openai_standin import OpenAIStandin, openai_standin  # noqa: F401 - fixture
from tests.pipeline_helpers import create_expert, run_ingest
from tests.s3_server import FaultProxy, aws_credentials, moto_endpoint, s3_bucket, s3_client, s3_proxy  # noqa: F401

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as instance:
        yield instance


def _document(tmp_path: Path, name: str, paragraphs: int, seed: int = 0) -> Path:
    path = tmp_path / name
    path.write_text("\n\n".join(sample_paragraphs(paragraphs, seed=seed)))
    return path


def _history(settings: Settings, expert_id: str) -> list[str]:
    with Session(engine_for(settings.resolved_database_url)) as session:
        return [e.message for e in ExpertProcessingProgressService(session).list_events(expert_id)]


def _state(settings: Settings, expert_id: str) -> tuple[str, str | None, int]:
    with Session(engine_for(settings.resolved_database_url)) as session:
        record = ExpertProcessingProgressService(session).get_progress(expert_id)
        assert record is not None
        return record.status, record.error_message, record.total_chunks


def _files(settings: Settings, expert_id: str) -> dict[str, ExpertFile]:
    with Session(engine_for(settings.resolved_database_url), expire_on_commit=False) as session:
        query = select(ExpertFile).where(ExpertFile.expert_id == expert_id)
        return {f.filename: f for f in session.scalars(query)}


def _retry_through_the_api(settings: Settings, expert_id: str) -> None:
    with TestClient(create_app(settings)) as client:
        response = client.post(f"/api/experts/{expert_id}/retry")
        assert response.status_code == 202, response.text


# --- the embedding provider -------------------------------------------------------------------


@pytest.fixture
def openai_settings(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, openai_standin: OpenAIStandin  # noqa: F811
) -> Settings:
    monkeypatch.setenv("OPENAI_API_KEY", OPENAI_KEY)  # reaches Dagster as an EnvVar
    return settings.model_copy(update={
        "embedding_provider": "openai", "openai_api_key": OPENAI_KEY, "openai_base_url": openai_standin.url,
        "embedding_batch_size": 4,
    })


def test_provider_rate_limits_and_errors_for_a_while_are_ridden_out(
    openai_settings: Settings, openai_standin: OpenAIStandin, instance: dg.DagsterInstance, tmp_path: Path  # noqa: F811
) -> None:
    expert_id = create_expert(openai_settings, [_document(tmp_path, "tides.txt", 6)])
    # Short Retry-After values keep the test quick; the SDK honours them for both kinds.
    openai_standin.fail_next(3, 429, retry_after=0.05)
    openai_standin.fail_next(2, 500, retry_after=0.05)

    assert run_ingest(openai_settings, expert_id, instance).success
    status, error, chunks = _state(openai_settings, expert_id)
    assert (status, error) == ("completed", None) and chunks > 0
    # Every chunk embedded exactly once, stored exactly once.
    sent = [text for request in openai_standin.embedding_requests for text in request.inputs]
    assert len(sent) == len(set(sent)) == chunks
    assert build_vector_store(openai_settings).count(expert_id) == chunks
    trouble = [m for m in _history(openai_settings, expert_id) if m.startswith("The embedding provider answered")]
    assert trouble == [
        "The embedding provider answered 429 (rate limited) 3 times, 500 (server error) twice; the requests were retried"
    ]


def test_provider_down_for_good_fails_truthfully_and_a_retry_pays_only_for_the_rest(
    openai_settings: Settings, openai_standin: OpenAIStandin, instance: dg.DagsterInstance, tmp_path: Path  # noqa: F811
) -> None:
    expert_id = create_expert(openai_settings, [_document(tmp_path, "harbours.txt", 60, seed=3)])
    openai_standin.delay = 0.1  # so the outage begins while batches are still to go

    def outage_after_two_batches() -> None:
        deadline = time.monotonic() + 60
        while len(openai_standin.embedding_requests) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        openai_standin.fail_next(10_000, 500, retry_after=0.01)

    outage = threading.Thread(target=outage_after_two_batches, daemon=True)
    outage.start()
    assert not run_ingest(openai_settings, expert_id, instance).success
    outage.join(timeout=5)

    status, error, chunks = _state(openai_settings, expert_id)
    assert status == "failed"
    assert error is not None and "HTTP 500" in error and "retries" in error and "Traceback" not in error
    paid_before = {text for request in openai_standin.embedding_requests for text in request.inputs}
    assert 0 < len(paid_before) < chunks

    # The provider is back; the user presses retry.
    openai_standin.recover()
    answered = len(openai_standin.embedding_requests)
    _retry_through_the_api(openai_settings, expert_id)
    assert run_ingest(openai_settings, expert_id, instance).success

    status, error, chunks = _state(openai_settings, expert_id)
    assert (status, error) == ("completed", None)
    paid_after = [text for request in openai_standin.embedding_requests[answered:] for text in request.inputs]
    assert not paid_before & set(paid_after)  # nothing paid for twice
    assert len(paid_before) + len(paid_after) == chunks
    assert build_vector_store(openai_settings).count(expert_id) == chunks
    history = _history(openai_settings, expert_id)
    assert any(m.startswith("The embedding provider answered 500 (server error)") for m in history), history


# --- file storage (S3) ------------------------------------------------------------------------


@pytest.fixture
def s3_settings(
    settings: Settings, s3_bucket: str, s3_proxy: FaultProxy, aws_credentials: Any  # noqa: F811
) -> Settings:
    return settings.model_copy(update={"file_storage": "s3", "s3_bucket": s3_bucket, "aws_endpoint_url": s3_proxy.url})


def test_storage_failing_transiently_is_ridden_out(
    s3_settings: Settings, s3_proxy: FaultProxy, instance: dg.DagsterInstance, tmp_path: Path  # noqa: F811
) -> None:
    expert_id = create_expert(s3_settings, [_document(tmp_path, "reefs.txt", 4)])
    s3_proxy.fail_next(2, 503)

    assert run_ingest(s3_settings, expert_id, instance).success
    status, error, chunks = _state(s3_settings, expert_id)
    assert (status, error) == ("completed", None)
    assert _files(s3_settings, expert_id)["reefs.txt"].status == "indexed"
    assert build_vector_store(s3_settings).count(expert_id) == chunks
    assert len(s3_proxy.injected) == 2
    history = _history(s3_settings, expert_id)
    assert "The file storage answered 503 (unavailable) twice; the requests were retried (fetching reefs.txt)" in history


def test_storage_failing_for_one_file_fails_it_alone_until_a_retry(
    s3_settings: Settings, s3_proxy: FaultProxy, instance: dg.DagsterInstance, tmp_path: Path  # noqa: F811
) -> None:
    expert_id = create_expert(
        s3_settings, [_document(tmp_path, "kelp.txt", 4, seed=1), _document(tmp_path, "storms.txt", 4, seed=2)]
    )
    s3_proxy.fail_reads_of("storms.txt", 503)

    assert run_ingest(s3_settings, expert_id, instance).success
    files = _files(s3_settings, expert_id)
    assert files["kelp.txt"].status == "indexed"
    assert (files["storms.txt"].status, files["storms.txt"].error_kind) == ("failed", "fetch_failed")
    assert "could not be fetched from storage" in (files["storms.txt"].error_message or "")
    status, _, chunks_first = _state(s3_settings, expert_id)
    assert status == "completed"  # with one file failed, said in the row and the history
    history = _history(s3_settings, expert_id)
    assert any(m.startswith("storms.txt failed: could not be fetched from storage") for m in history), history

    s3_proxy.heal()
    _retry_through_the_api(s3_settings, expert_id)
    assert run_ingest(s3_settings, expert_id, instance).success
    files = _files(s3_settings, expert_id)
    assert {f.status for f in files.values()} == {"indexed"}
    vectors = build_vector_store(s3_settings).count(expert_id)
    assert vectors == sum(f.chunks or 0 for f in files.values()) > chunks_first  # kelp's vectors not doubled
