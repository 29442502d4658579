"""The real ingest job for one expert: stages in order, truthful counters, bad files alone."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest
from sqlalchemy.orm import Session

from expert_pipeline.core.db import engine_for
from expert_pipeline.core.models import ExpertFile
from expert_pipeline.core.progress_service import ExpertProcessingProgressService
from expert_pipeline.core.settings import Settings
from expert_pipeline.adapters.factory import build_vector_store
from tests.conftest import SHARED_DIR
from tests.fixture_documents import (
    make_corrupt_pdf,
    make_encrypted_pdf,
    make_image_only_pdf,
    make_pdf,
    sample_paragraphs,
)
from tests.pipeline_helpers import ProgressWatcher, create_expert, run_ingest

STAGE_ORDER = ["file_processing", "text_extraction", "embedding", "pinecone_storage", "complete"]


@pytest.fixture
def fast_settings(settings: Settings) -> Settings:
    # Small batches so even a short document shows several batch updates.
    return settings.model_copy(update={"embedding_batch_size": 4, "progress_min_write_interval_seconds": 0.0})


def _service(settings: Settings) -> tuple[Session, ExpertProcessingProgressService]:
    session = Session(engine_for(settings.resolved_database_url), expire_on_commit=False)
    return session, ExpertProcessingProgressService(session)


def _files(settings: Settings, expert_id: str) -> dict[str, ExpertFile]:
    with Session(engine_for(settings.resolved_database_url)) as session:
        return {f.filename: f for f in session.query(ExpertFile).filter_by(expert_id=expert_id)}


def test_ingest_steps_through_stages_with_monotonic_progress(
    fast_settings: Settings, instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    docs = [
        make_pdf(tmp_path / "handbook.pdf", ["\n\n".join(sample_paragraphs(6, seed=s)) for s in range(3)]),
        make_pdf(tmp_path / "notes.pdf", ["\n\n".join(sample_paragraphs(4, seed=9))]),
    ]
    expert_id = create_expert(fast_settings, docs)
    watcher = ProgressWatcher(fast_settings, expert_id)
    with watcher.watching():
        result = run_ingest(fast_settings, expert_id, instance)
    assert result.success

    session, service = _service(fast_settings)
    with session:
        record = service.get_progress(expert_id)
        events = service.list_events(expert_id)
    assert record is not None
    assert (record.status, record.stage, record.progress_percentage) == ("completed", "complete", 100.0)
    assert (record.total_files, record.processed_files, record.failed_files) == (2, 2, 0)
    assert record.current_chunk == record.total_chunks > 0
    assert record.total_batches == record.current_batch >= 3
    assert record.completed_at is not None and record.error_message is None

    # Stages appear in the specification's order, and the bar never goes backwards.
    stages_seen = [s for s, _, _ in watcher.samples]
    order = [STAGE_ORDER.index(s) for s in stages_seen]
    assert order == sorted(order)
    assert [s for s in STAGE_ORDER if s in stages_seen][-1] == "complete"
    percentages = [p for _, _, p in watcher.samples]
    assert percentages == sorted(percentages)
    assert all(p < 100 for _, status, p in watcher.samples if status != "completed")
    event_stages = [e.stage for e in events]
    assert [s for s in STAGE_ORDER if s in event_stages] == STAGE_ORDER
    assert sum(1 for e in events if e.message.endswith("indexed")) == 2

    # Every chunk became exactly one vector, and the asset check agrees.
    assert build_vector_store(fast_settings).count(expert_id) == record.total_chunks
    checks = result.get_asset_check_evaluations()
    assert [(c.check_name, c.passed) for c in checks] == [("vector_count_matches_chunks", True)]
    files = _files(fast_settings, expert_id)
    assert {f.status for f in files.values()} == {"indexed"}
    assert files["handbook.pdf"].pages == 3


def test_rerun_never_duplicates_vectors(fast_settings: Settings, instance: dg.DagsterInstance, tmp_path: Path) -> None:
    doc = make_pdf(tmp_path / "a.pdf", ["\n\n".join(sample_paragraphs(5, seed=3))])
    expert_id = create_expert(fast_settings, [doc])
    assert run_ingest(fast_settings, expert_id, instance).success
    store = build_vector_store(fast_settings)
    first = store.count(expert_id)
    session, service = _service(fast_settings)
    with session:
        service.create_progress_record(expert_id=expert_id, total_files=1)  # a retry request
    assert run_ingest(fast_settings, expert_id, instance).success
    assert store.count(expert_id) == first > 0
    with session:
        record = service.get_progress(expert_id)
        assert record is not None and record.status == "completed"


def test_bad_files_fail_alone_with_reasons(
    fast_settings: Settings, instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    binary = tmp_path / "renamed.txt"
    binary.write_bytes(bytes(range(256)) * 40)
    unsupported = tmp_path / "data.xyz"
    unsupported.write_text("what is this")
    docs = [
        make_pdf(tmp_path / "good.pdf", ["\n\n".join(sample_paragraphs(4, seed=1))]),
        make_encrypted_pdf(tmp_path / "locked.pdf"),
        make_corrupt_pdf(tmp_path / "broken.pdf"),
        make_image_only_pdf(tmp_path / "scan.pdf"),
        empty,
        binary,
        unsupported,
    ]
    expert_id = create_expert(fast_settings, docs)
    result = run_ingest(fast_settings, expert_id, instance)
    assert result.success

    session, service = _service(fast_settings)
    with session:
        record = service.get_progress(expert_id)
        events = service.list_events(expert_id)
    assert record is not None and record.status == "completed"
    assert (record.total_files, record.processed_files, record.failed_files) == (7, 1, 6)
    files = _files(fast_settings, expert_id)
    assert files["good.pdf"].status == "indexed"
    expected_kinds = {
        "locked.pdf": "encrypted", "broken.pdf": "corrupt", "scan.pdf": "no_text",
        "empty.txt": "empty", "data.xyz": "unsupported_type",
    }
    for filename, kind in expected_kinds.items():
        assert (files[filename].status, files[filename].error_kind) == ("failed", kind), filename
    assert files["renamed.txt"].status == "failed" and files["renamed.txt"].error_message
    assert "password" in (files["locked.pdf"].error_message or "")
    failure_events = {e.data.get("filename"): e.message for e in events if "failed:" in e.message}
    assert set(failure_events) == set(expected_kinds) | {"renamed.txt"}
    assert build_vector_store(fast_settings).count(expert_id) == files["good.pdf"].chunks


def test_expert_fails_naming_files_when_nothing_indexes(
    fast_settings: Settings, instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    expert_id = create_expert(fast_settings, [make_encrypted_pdf(tmp_path / "locked.pdf"), empty])
    result = run_ingest(fast_settings, expert_id, instance)
    assert not result.success
    session, service = _service(fast_settings)
    with session:
        record = service.get_progress(expert_id)
    assert record is not None
    assert (record.status, record.stage, record.failed_files) == ("failed", "failed", 2)
    assert record.error_message is not None
    assert "locked.pdf" in record.error_message and "empty.txt" in record.error_message
    assert record.completed_at is not None and record.progress_percentage < 100


def test_shared_corpus_pdfs(fast_settings: Settings, instance: dg.DagsterInstance) -> None:
    corpus = SHARED_DIR / "corpus"
    if not corpus.is_dir():
        pytest.skip(f"shared corpus not present at {corpus}")
    names = ["minimal-document.pdf", "pdflatex-4-pages.pdf", "libreoffice-writer-password.pdf", "imagemagick-images.pdf"]
    expert_id = create_expert(fast_settings, [corpus / n for n in names])
    assert run_ingest(fast_settings, expert_id, instance).success
    files = _files(fast_settings, expert_id)
    assert files["minimal-document.pdf"].status == "indexed"
    assert files["pdflatex-4-pages.pdf"].status == "indexed" and files["pdflatex-4-pages.pdf"].pages == 4
    assert 12_000 < (files["pdflatex-4-pages.pdf"].characters or 0) < 16_000
    assert files["libreoffice-writer-password.pdf"].error_kind == "encrypted"
    assert files["imagemagick-images.pdf"].error_kind == "no_text"
