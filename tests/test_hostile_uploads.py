"""Hostile uploads: each gets a clear 4xx, or fails alone in the pipeline with a reason, and the
server stays healthy. Extraction of one file is bounded in time and memory."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from expert_pipeline.core.db import engine_for
from expert_pipeline.core.models import ExpertFile
from expert_pipeline.core.progress_service import ExpertProcessingProgressService
from expert_pipeline.core.settings import Settings
from status_api.main import create_app
from tests.conftest import LiveServer
from tests.hostile_files import deeply_nested_pdf, docx_bomb, huge_page_count_pdf, renamed_binary, slow_pdf
from tests.pipeline_helpers import create_expert, run_ingest

GOOD_TEXT = "A perfectly ordinary document about lighthouses and the people who kept them. " * 20


def _healthy(http: httpx.Client) -> None:
    assert http.get("/healthz").status_code == 200
    created = http.post("/api/experts", data={"name": "still works"}, files={"files": ("ok.txt", b"hello there")})
    assert created.status_code == 201, created.text


def _error(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["success"] is False and body["error"]
    return str(body["error"])


# --- rejected at the door -------------------------------------------------------------------


def test_wrong_extensions_get_415_naming_the_file(http: httpx.Client) -> None:
    for name in ("setup.exe", "archive.tar.gz", "README"):
        message = _error(http.post("/api/experts", data={"name": "x"}, files={"files": (name, b"MZ\x90\x00")}), 415)
        assert name in message and "supported" in message
    _healthy(http)


def test_thousands_of_tiny_files_get_a_clear_413(http: httpx.Client, settings: Settings) -> None:
    # More files than even the multipart parser accepts (1,000): the answer states our limit.
    files = [("files", (f"note-{i}.txt", b"x")) for i in range(3000)]
    message = _error(http.post("/api/experts", data={"name": "x"}, files=files), 413)
    assert f"at most {settings.max_upload_files}" in message
    # Just over our own limit: the same kind of answer.
    files = files[: settings.max_upload_files + 1]
    assert f"at most {settings.max_upload_files}" in _error(http.post("/api/experts", data={"name": "x"}, files=files), 413)
    assert not any(settings.files_dir.rglob("note-*"))  # nothing half-stored
    _healthy(http)


def test_path_traversal_and_very_long_names_are_stored_safely(http: httpx.Client, settings: Settings) -> None:
    names = ["../../etc/passwd.txt", "..\\..\\windows\\win.ini.md", "/etc/shadow.txt", "é" * 1000 + ".txt", "a" * 1000 + ".md"]
    response = http.post(
        "/api/experts", data={"name": "x"}, files=[("files", (name, b"some text")) for name in names]
    )
    assert response.status_code == 201, response.text
    stored = sorted((f["filename"] for f in response.json()["expert"]["files"]), key=len)  # no order promised
    assert sorted(stored[:3]) == ["passwd.txt", "shadow.txt", "win.ini.md"]
    long_names = {name[0]: name for name in stored[3:]}
    assert long_names["é"].endswith(".txt") and len(long_names["é"].encode()) <= 200
    assert long_names["a"].endswith(".md") and len(long_names["a"]) <= 180
    # Every byte landed under the expert's own folder of the storage root, nowhere else.
    expert_id = response.json()["expert"]["id"]
    on_disk = [p for p in settings.expert_pipeline_home.rglob("*") if p.is_file() and p.parent.parent.name == expert_id]
    assert len(on_disk) == len(names)
    assert all(settings.files_dir / "experts" / expert_id in p.parents for p in on_disk)
    assert not (settings.expert_pipeline_home.parent / "etc").exists()
    # A part header longer than the parser allows is refused as a whole, with a message.
    too_long = http.post("/api/experts", data={"name": "x"}, files={"files": ("a" * 20_000 + ".md", b"text")})
    assert "multipart" in _error(too_long, 400).lower()
    _healthy(http)


@pytest.fixture
def small_limit_api(settings: Settings) -> Iterator[tuple[LiveServer, Settings]]:
    limited = settings.model_copy(update={"max_upload_total_bytes": 1024 * 1024, "max_upload_file_bytes": 1024 * 1024})
    app = create_app(limited)
    with LiveServer(app) as server:
        yield server, limited


def test_oversized_request_is_refused_before_it_is_read(small_limit_api: tuple[LiveServer, Settings]) -> None:
    server, settings = small_limit_api
    host, port = server.url.removeprefix("http://").split(":")
    # Declares 10 GB and sends a few bytes: the answer comes at once, without waiting for the rest.
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        started = time.monotonic()
        conn.sendall(
            b"POST /api/experts HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            b"Content-Length: 10737418240\r\n\r\n--b\r\n"
        )
        answer = conn.recv(65536).decode()
        assert answer.startswith("HTTP/1.1 413"), answer
        assert "request too large" in answer and time.monotonic() - started < 5

    # No length at all (chunked): cut off once the bytes received pass the limit.
    def body() -> Iterator[bytes]:
        yield b'--b\r\nContent-Disposition: form-data; name="name"\r\n\r\nbig\r\n'
        yield b'--b\r\nContent-Disposition: form-data; name="files"; filename="big.txt"\r\n\r\n'
        for _ in range(64):  # 4 MB against a 1 MB limit
            yield b"x" * 65536
        yield b"\r\n--b--\r\n"

    with httpx.Client(base_url=server.url, timeout=10) as http:
        try:
            response = http.post("/api/experts", content=body(), headers={"Content-Type": "multipart/form-data; boundary=b"})
        except httpx.HTTPError:
            response = None  # the server may close the connection while the client is still sending
        if response is not None:
            assert "request too large" in _error(response, 413)
        assert http.get("/api/experts").json()["count"] == 0  # nothing was created
        assert not any(p.is_file() for p in settings.files_dir.rglob("*"))
        _healthy(http)


# --- accepted, then failed alone by the pipeline ---------------------------------------------


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as instance:
        yield instance


def test_hostile_files_fail_alone_within_the_extraction_bounds(
    settings: Settings, instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    # Tight bounds so the test is quick; production defaults are 120 s and 2 GB per file.
    bounded = settings.model_copy(update={"extraction_timeout_seconds": 3.0, "extraction_memory_mb": 300})
    good = tmp_path / "lighthouses.txt"
    good.write_text(GOOD_TEXT)
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    files = [
        good, empty, renamed_binary(tmp_path / "photo.pdf"), huge_page_count_pdf(tmp_path / "pages.pdf"),
        deeply_nested_pdf(tmp_path / "nested.pdf"), slow_pdf(tmp_path / "slow.pdf"), docx_bomb(tmp_path / "bomb.docx"),
    ]
    assert sum(p.stat().st_size for p in files) < 2 * 1024 * 1024  # small on disk, every one of them
    expert_id = create_expert(bounded, files)

    started = time.monotonic()
    result = run_ingest(bounded, expert_id, instance)
    elapsed = time.monotonic() - started
    assert result.success

    engine = engine_for(bounded.resolved_database_url)
    with Session(engine) as session:
        rows = {f.filename: f for f in session.scalars(select(ExpertFile).where(ExpertFile.expert_id == expert_id))}
        record = ExpertProcessingProgressService(session).get_progress(expert_id)
        events = [e.message for e in ExpertProcessingProgressService(session).list_events(expert_id)]
    outcome = {name: (f.status, f.error_kind, f.error_message or "") for name, f in rows.items()}
    assert outcome["lighthouses.txt"][0] == "indexed"
    expected = {
        "empty.txt": ("empty", "file is empty"),
        "photo.pdf": ("corrupt", "not a valid PDF"),
        "pages.pdf": ("too_large", "20000 pages"),
        "nested.pdf": ("corrupt", "damaged PDF"),
        "slow.pdf": ("too_large", "took longer than 3 s"),
        "bomb.docx": ("too_large", "more memory than allowed"),
    }
    for name, (kind, words) in expected.items():
        status, error_kind, message = outcome[name]
        assert (status, error_kind) == ("failed", kind), (name, outcome[name])
        assert words in message, (name, message)
        assert any(e.startswith(f"{name} failed:") for e in events), (name, events)
    assert record is not None and record.status == "completed"
    assert (record.processed_files, record.failed_files) == (1, 6)
    # Bounded: the slow file cost its 3 s, nothing hung the run.
    assert elapsed < 60
