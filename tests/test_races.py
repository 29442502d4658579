"""Impatient users against the real daemon: actions back to back must end where the last one says."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from expert_pipeline.core.settings import Settings
from tests.conftest import LiveServer
from tests.fixture_documents import make_pdf, sample_paragraphs
from tests.waiting import wait_for

pytestmark = pytest.mark.slow


@pytest.fixture
def daemon_env() -> dict[str, str]:
    # Small batches: a cancel lands mid-embedding rather than after it.
    return {"EMBEDDING_BATCH_SIZE": "4", "PROGRESS_MIN_WRITE_INTERVAL_SECONDS": "0.1"}


@pytest.fixture
def api(daemon: Settings) -> Iterator[httpx.Client]:
    from status_api.main import create_app

    with LiveServer(create_app(daemon)) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


def _progress(api: httpx.Client, expert_id: str) -> dict[str, object]:
    response = api.get(f"/api/experts/{expert_id}/progress")
    assert response.status_code == 200, response.text
    return response.json()["progress"]  # type: ignore[no-any-return]


def test_cancel_then_retry_at_once_ten_times_ends_completed(api: httpx.Client, tmp_path: Path) -> None:
    pdf = make_pdf(tmp_path / "notes.pdf", ["\n\n".join(sample_paragraphs(6, seed=p)) for p in range(6)])
    with pdf.open("rb") as handle:
        created = api.post("/api/experts", data={"name": "Impatient"}, files=[("files", ("notes.pdf", handle, "application/pdf"))])
    assert created.status_code == 201, created.text
    expert_id = created.json()["expert"]["id"]
    for attempt in range(10):
        # Half the cancels hit a queued request, half a run at work; the retry follows at once
        # (10 ms), or after a second, when the cancelled run has seen the cancel and is ending.
        if attempt % 2:
            wait_for("the run to be working", lambda: _progress(api, expert_id)["status"] == "in_progress", timeout=120)
        cancel = api.post(f"/api/experts/{expert_id}/cancel")
        time.sleep(0.01 if attempt % 4 < 2 else 1.0)
        retry = api.post(f"/api/experts/{expert_id}/retry")
        assert (cancel.status_code, retry.status_code) == (200, 202), (attempt, cancel.text, retry.text)
    wait_for(
        "the last retry to finish",
        lambda: _progress(api, expert_id)["status"] in ("completed", "failed", "cancelled"),
        timeout=300, interval=0.5,
    )
    progress = _progress(api, expert_id)
    assert (progress["status"], progress["error_message"]) == ("completed", None), progress
    assert progress["progress_percentage"] == 100.0
    # Every earlier request ended as the user's cancel, never as a failure.
    events = api.get(f"/api/experts/{expert_id}/progress/events").json()
    messages = [e["message"] for e in events["events"]]
    assert not any(m.startswith("Processing failed") for m in messages), messages
    assert sum(m == "Processing cancelled: Cancelled by user" for m in messages) == 10, messages
