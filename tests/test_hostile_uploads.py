"""Hostile uploads: each gets a clear 4xx, or fails alone in the pipeline with a reason, and the
server stays healthy. Extraction of one file is bounded in time and memory."""

from __future__ import annotations

import multiprocessing
import os
import resource
import signal
import socket
import threading
import time
import uuid
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
from expert_pipeline.text.extraction import ExtractionError
from expert_pipeline.text.isolated_extraction import ExtractionLimits, IsolatedExtractor
from expert_pipeline.ingest.work_area import ExpertWorkArea
from status_api.main import create_app
from tests.conftest import LiveServer
from tests.hostile_files import (
    deeply_nested_catalog_pdf,
    deeply_nested_pdf,
    docx_bomb,
    flate_bomb_pdf,
    huge_page_count_pdf,
    random_bytes,
    renamed_binary,
    renamed_program,
    self_drawing_pdf,
    slow_pdf,
    understated_page_count_pdf,
)
from tests.pipeline_helpers import run_ingest

GOOD_TEXT = "A perfectly ordinary document about lighthouses and the people who kept them. " * 20


def _healthy(http: httpx.Client) -> None:
    assert http.get("/healthz").status_code == 200
    created = http.post("/api/experts", data={"name": "still works"}, files={"files": ("ok.txt", b"hello there")})
    assert created.status_code == 201, created.text


def _error(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["success"] is False and body["error"]
    return str(body["error"])


def _post_raw(http: httpx.Client, body: bytes) -> httpx.Response:
    return http.post("/api/experts", content=body, headers={"Content-Type": "multipart/form-data; boundary=b"})


# --- rejected at the door -------------------------------------------------------------------


def test_wrong_extensions_get_415_naming_the_file(http: httpx.Client) -> None:
    for name in ("setup.exe", "report.pdf.exe", "archive.tar.gz", "README"):
        message = _error(http.post("/api/experts", data={"name": "x"}, files={"files": (name, b"MZ\x90\x00")}), 415)
        assert name in message and "supported: .docx" in message
    # One bad file refuses the whole request: nothing of it is kept.
    mixed = [("files", ("notes.txt", b"fine")), ("files", ("tool.exe", b"MZ"))]
    assert "tool.exe" in _error(http.post("/api/experts", data={"name": "x"}, files=mixed), 415)
    assert http.get("/api/experts").json()["count"] == 0
    _healthy(http)


def _raw_file_part(filename: bytes) -> bytes:
    return (
        b'--b\r\nContent-Disposition: form-data; name="name"\r\n\r\nx\r\n'
        b'--b\r\nContent-Disposition: form-data; name="files"; filename="' + filename + b'"\r\n\r\ntext\r\n--b--\r\n'
    )


def test_nameless_and_malformed_parts_get_a_clear_4xx(http: httpx.Client) -> None:
    for name in ("..", "../", "...", "\u202e.\u202e"):
        assert "needs a name" in _error(http.post("/api/experts", data={"name": "x"}, files={"files": (name, b"x")}), 400)
    # httpx escapes control characters in a filename; a hostile client sends them raw.
    assert "needs a name" in _error(_post_raw(http, _raw_file_part(b"\x00\x01\x7f")), 400)
    assert "Invalid multipart" in _error(_post_raw(http, _raw_file_part(b"line\rbreak.txt")), 400)
    # A part with an empty filename, or only the RFC 2231 form the parser does not read, is no file.
    no_filename = (
        b'--b\r\nContent-Disposition: form-data; name="name"\r\n\r\nx\r\n'
        b"--b\r\nContent-Disposition: form-data; name=\"files\"; filename*=utf-8''..%2F..%2Fetc%2Fpasswd.txt\r\n\r\n"
        b"text\r\n--b--\r\n"
    )
    assert "needs a filename" in _error(_post_raw(http, no_filename), 422)
    assert "needs a filename" in _error(
        http.post("/api/experts", data={"name": "x"}, files={"files": ("", b"x")}), 422
    )
    no_boundary = http.post("/api/experts", content=b"--b--", headers={"Content-Type": "multipart/form-data"})
    assert "boundary" in _error(no_boundary, 400)
    many_fields = b'--b\r\nContent-Disposition: form-data; name="agent_id"\r\n\r\nx\r\n' * 1500 + b"--b--\r\n"
    assert "Too many fields" in _error(_post_raw(http, many_fields), 400)
    assert "files: Field required" in _error(http.post("/api/experts", json={"name": "x"}), 422)
    assert http.get("/api/experts").json()["count"] == 0
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
    assert http.get("/api/experts").json()["count"] == 0
    _healthy(http)


def _files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


def test_path_traversal_and_very_long_names_are_stored_safely(
    http: httpx.Client, settings: Settings, tmp_path: Path
) -> None:
    escape = f"escaped-{uuid.uuid4().hex}.txt"
    names = {
        "../../etc/passwd.txt": "passwd.txt",
        "..\\..\\windows\\win.ini.md": "win.ini.md",
        "/etc/shadow.txt": "shadow.txt",
        "C:\\Windows\\system.ini.txt": "system.ini.txt",
        "../" * 20 + f"tmp/{escape}": escape,
        "invoice\u202etxt.pdf": "invoicetxt.pdf",  # would show as "invoicefdp.txt"
    }
    long_names = ["é" * 1000 + ".txt", "a" * 1000 + ".md", "📚" * 300 + ".pdf", "あ" * 400 + ".md"]
    before = _files_under(tmp_path)
    payload = [("files", (name, b"%PDF-1.7 some text" if name.endswith(".pdf") else b"some text"))
               for name in [*names, *long_names]]
    response = http.post("/api/experts", data={"name": "x"}, files=payload)
    assert response.status_code == 201, response.text
    expert_id = response.json()["expert"]["id"]
    shown = [f["filename"] for f in http.get(f"/api/experts/{expert_id}").json()["expert"]["files"]]
    assert set(names.values()) <= set(shown)
    controls = _post_raw(http, _raw_file_part(b"nul\x00in\x1fname\x85.txt"))
    assert controls.status_code == 201, controls.text
    assert [f["filename"] for f in controls.json()["expert"]["files"]] == ["nulinname.txt"]
    # Long names: cut to fit a filesystem's 255 bytes on a character boundary, extension kept.
    for original in long_names:
        kept = [s for s in shown if s[0] == original[0]]
        assert len(kept) == 1, (original[:5], shown)
        assert kept[0].endswith(original[original.rindex("."):]) and len(kept[0].encode()) <= 200
        assert original.startswith(kept[0].rsplit(".", 1)[0])  # whole characters only
    # Every new byte landed in the expert's own folder of the storage root, nowhere else.
    expert_dir = settings.files_dir / "experts" / expert_id
    new = _files_under(tmp_path) - before
    controls_dir = settings.files_dir / "experts" / controls.json()["expert"]["id"]
    stored = {p for p in new if expert_dir in p.parents}
    assert len(stored) == len(payload)
    assert [p.name for p in new if controls_dir in p.parents] == ["nulinname.txt"]
    stored |= {p for p in new if controls_dir in p.parents}
    assert all(p.name.startswith("progress.db") for p in new - stored), new - stored  # SQLite's journal
    assert not Path("/tmp", escape).exists() and not Path("/etc/passwd.txt").exists()
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
        assert "request too large" in answer and "1 MB" in answer and time.monotonic() - started < 5

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
        # One file over the per-file limit inside a request under the total: refused by storage.
        over = http.post("/api/experts", data={"name": "x"}, files={"files": ("big.txt", b"x" * (1024 * 1024 + 1))})
        assert "big.txt" in _error(over, 413)
        assert http.get("/api/experts").json()["count"] == 0  # nothing was created
        assert not any(p.is_file() for p in settings.files_dir.rglob("*"))
        _healthy(http)


# --- the extraction worker's bounds, on their own ---------------------------------------------


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every hostile document once per module (the bombs take a second to build)."""
    folder = tmp_path_factory.mktemp("hostile")
    (folder / "lighthouses.txt").write_text(GOOD_TEXT)
    (folder / "keepers.md").write_text("# Keepers\n\n" + GOOD_TEXT)
    (folder / "empty.txt").write_bytes(b"")
    files = [
        folder / "lighthouses.txt", folder / "keepers.md", folder / "empty.txt",
        self_drawing_pdf(folder / "self_drawing.pdf"),
        renamed_binary(folder / "photo.pdf"),
        renamed_program(folder / "program.docx"),
        random_bytes(folder / "noise.txt"),
        huge_page_count_pdf(folder / "pages.pdf"),
        understated_page_count_pdf(folder / "understated.pdf"),
        deeply_nested_pdf(folder / "nested.pdf"),
        deeply_nested_catalog_pdf(folder / "nested_catalog.pdf"),
        flate_bomb_pdf(folder / "flate_bomb.pdf"),
        slow_pdf(folder / "slow.pdf"),
        docx_bomb(folder / "bomb.docx"),
    ]
    # Small on disk, every one of them: the harm is in what a parser makes of them.
    assert sum(p.stat().st_size for p in files) < 3 * 1024 * 1024
    return {p.name: p for p in files}


def _outcome(extractor: IsolatedExtractor, work: ExpertWorkArea, path: Path) -> tuple[str, str]:
    try:
        extracted = extractor.extract(work, path.stem, path, path.name)
    except ExtractionError as exc:
        return exc.kind, str(exc)
    return "ok", f"{extracted.pages} pages"


def test_a_file_over_the_time_limit_fails_and_the_next_file_gets_a_fresh_worker(
    hostile: dict[str, Path], tmp_path: Path
) -> None:
    work = ExpertWorkArea(tmp_path, "expert")
    with IsolatedExtractor(ExtractionLimits(timeout_seconds=1.0, memory_mb=1024)) as extractor:
        assert _outcome(extractor, work, hostile["lighthouses.txt"]) == ("ok", "1 pages")  # the worker is up
        started = time.monotonic()
        kind, message = _outcome(extractor, work, hostile["slow.pdf"])
        elapsed = time.monotonic() - started
        assert (kind, message) == ("too_large", "too large or too complex: extraction took longer than 1 s")
        assert 1.0 <= elapsed < 6.0
        assert _outcome(extractor, work, hostile["keepers.md"]) == ("ok", "1 pages")
    assert not work.text_path("slow").exists()
    assert not list(work.text_path("slow").parent.glob("*.partial"))  # the killed worker's half file
    assert len(list(work.read_pages("keepers"))) == 1


def test_a_file_over_the_memory_limit_fails_without_touching_the_callers_memory(
    hostile: dict[str, Path], tmp_path: Path
) -> None:
    work = ExpertWorkArea(tmp_path, "expert")
    peak_before_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with IsolatedExtractor(ExtractionLimits(timeout_seconds=60.0, memory_mb=256)) as extractor:
        started = time.monotonic()
        # ~150 MB of XML in a 100 KB file: the worker cannot hold it under 256 MB.
        assert _outcome(extractor, work, hostile["bomb.docx"]) == (
            "too_large", "too large: extraction needed more than 256 MB of memory"
        )
        assert time.monotonic() - started < 30
        assert _outcome(extractor, work, hostile["lighthouses.txt"]) == ("ok", "1 pages")
    # The bomb went off in the worker: this process grew by nothing like its size.
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before_kb < 64 * 1024


def test_a_worker_killed_from_outside_fails_that_file_alone(hostile: dict[str, Path], tmp_path: Path) -> None:
    work = ExpertWorkArea(tmp_path, "expert")
    others = {child.pid for child in multiprocessing.active_children()}
    with IsolatedExtractor(ExtractionLimits(timeout_seconds=60.0, memory_mb=1024)) as extractor:
        assert _outcome(extractor, work, hostile["lighthouses.txt"]) == ("ok", "1 pages")  # the worker is up
        (worker,) = [child for child in multiprocessing.active_children() if child.pid not in others]

        # What the kernel's OOM killer does to a process beyond the machine's memory.
        killer = threading.Timer(0.5, os.kill, (worker.pid, signal.SIGKILL))
        killer.start()
        try:
            kind, message = _outcome(extractor, work, hostile["slow.pdf"])
        finally:
            killer.cancel()
        assert kind == "too_large" and "extraction worker died" in message and "-9" in message, message
        assert _outcome(extractor, work, hostile["keepers.md"]) == ("ok", "1 pages")


# --- accepted, then failed alone by the pipeline ---------------------------------------------


EXPECTED_FAILURES = {
    "empty.txt": ("empty", "file is empty"),
    "photo.pdf": ("corrupt", "not a valid PDF file"),
    "program.docx": ("corrupt", "not a valid Word (.docx) file"),
    "noise.txt": ("unsupported_type", "binary content, not text"),
    "pages.pdf": ("too_large", "160000 pages (the limit is 5000)"),
    "understated.pdf": ("too_large", "beyond the PDF reader's safety limits"),
    "nested.pdf": ("corrupt", "nested too deeply"),
    "nested_catalog.pdf": ("corrupt", "nested too deeply"),
    # Either bound may stop it first at this test's 256 MB cap (the reader's 75 MB inflation
    # limit, or the worker's memory since layout-mode extraction and OCR support grew its
    # footprint); with the production 2 GB cap the reader's limit does. Both fail it alone.
    "flate_bomb.pdf": ("too_large", "too large: "),
    "slow.pdf": ("too_large", "extraction took longer than 4 s"),
    "bomb.docx": ("too_large", "extraction needed more than 256 MB of memory"),
}
INDEXED = {"lighthouses.txt", "keepers.md", "self_drawing.pdf"}


def test_hostile_files_uploaded_over_http_fail_alone_within_the_extraction_bounds(
    http: httpx.Client, settings: Settings, instance: dg.DagsterInstance, hostile: dict[str, Path]
) -> None:
    assert set(hostile) == INDEXED | set(EXPECTED_FAILURES)
    response = http.post(
        "/api/experts", data={"name": "hostile"},
        files=[("files", (name, path.read_bytes())) for name, path in hostile.items()],
    )
    assert response.status_code == 201, response.text  # each file is judged by the pipeline, alone
    expert_id = response.json()["expert"]["id"]

    # Tight bounds so the test is quick; production defaults are 120 s and 2 GB per file.
    bounded = settings.model_copy(update={"extraction_timeout_seconds": 4.0, "extraction_memory_mb": 256})
    started = time.monotonic()
    result = run_ingest(bounded, expert_id, instance)
    elapsed = time.monotonic() - started
    assert result.success

    with Session(engine_for(bounded.resolved_database_url)) as session:
        rows = {f.filename: f for f in session.scalars(select(ExpertFile).where(ExpertFile.expert_id == expert_id))}
        service = ExpertProcessingProgressService(session)
        record = service.get_progress(expert_id)
        events = [e.message for e in service.list_events(expert_id)]
    outcome = {name: (f.status, f.error_kind, f.error_message or "") for name, f in rows.items()}
    for name in INDEXED:
        assert outcome[name][0] == "indexed", (name, outcome[name])
    for name, (kind, words) in EXPECTED_FAILURES.items():
        status, error_kind, message = outcome[name]
        assert (status, error_kind) == ("failed", kind), (name, outcome[name])
        assert words in message, (name, message)
        assert f"{name} failed: {message}" in events, (name, events)
    assert record is not None and record.status == "completed"
    assert (record.processed_files, record.failed_files) == (len(INDEXED), len(EXPECTED_FAILURES))
    # Bounded: the slow file (an hour of parsing) cost its 4 s; nothing hung the run.
    assert elapsed < 60
    progress = http.get(f"/api/experts/{expert_id}/progress")
    assert progress.status_code == 200 and progress.json()["progress"]["status"] == "completed"
    _healthy(http)
