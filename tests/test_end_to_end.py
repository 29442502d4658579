"""The whole product as `make up` runs it: the API takes an upload, the Dagster daemon's
sensor starts the run, and the progress row reaches `completed` with no manual step."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from expert_pipeline.core.settings import Settings
from status_api.main import create_app
from tests.conftest import LiveServer
from tests.fixture_documents import make_pdf, sample_paragraphs

pytestmark = pytest.mark.slow


def test_upload_is_ingested_by_the_sensor_without_a_manual_step(daemon: Settings, tmp_path: Path) -> None:
    pdf = make_pdf(tmp_path / "tides.pdf", ["\n\n".join(sample_paragraphs(5, seed=4)), "The moon pulls the tides."])
    with LiveServer(create_app(daemon)) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        created = client.post("/api/experts", data={"name": "Tides"}, files={"files": ("tides.pdf", pdf.read_bytes())})
        assert created.status_code == 201
        expert_id = created.json()["expert"]["id"]
        deadline = time.monotonic() + 240
        seen: list[tuple[str, str]] = []
        while time.monotonic() < deadline:
            progress = client.get(f"/api/experts/{expert_id}/progress").json()["progress"]
            state = (progress["stage"], progress["status"])
            if not seen or seen[-1] != state:
                seen.append(state)
            if progress["status"] in ("completed", "failed", "cancelled"):
                break
            time.sleep(0.25)
        log = (tmp_path / "daemon.log").read_text(errors="replace")[-3000:]
        assert progress["status"] == "completed", f"{seen}\n{progress}\n{log}"
        assert progress["progress_percentage"] == 100.0 and progress["processed_files"] == 1
        assert seen[0] == ("file_processing", "pending") and seen[-1] == ("complete", "completed")
        files = client.get(f"/api/experts/{expert_id}").json()["expert"]["files"]
        assert files[0]["status"] == "indexed" and files[0]["chunks"] > 0
