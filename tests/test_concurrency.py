"""Twenty experts ingesting at once: every progress row monotonic and right, no cross-talk."""

from __future__ import annotations

import threading
from pathlib import Path

import dagster as dg
from sqlalchemy.orm import Session

from expert_pipeline.core.db import engine_for
from expert_pipeline.core.progress_service import ExpertProcessingProgressService
from expert_pipeline.core.settings import Settings
from expert_pipeline.adapters.factory import build_vector_store
from tests.fixture_documents import sample_paragraphs
from tests.pipeline_helpers import ProgressWatcher, create_expert, run_ingest

EXPERTS = 20


def test_twenty_experts_at_once(settings: Settings, tmp_path: Path) -> None:
    settings = settings.model_copy(update={"embedding_batch_size": 4, "progress_min_write_interval_seconds": 0.0})
    ids = []
    for i in range(EXPERTS):
        doc = tmp_path / f"doc{i}.md"
        doc.write_text(f"# Expert {i}\n\n" + "\n\n".join(sample_paragraphs(3 + i % 4, seed=i)))
        ids.append(create_expert(settings, [doc], name=f"expert {i}"))
    results: dict[str, bool] = {}
    watchers = {expert_id: ProgressWatcher(settings, expert_id) for expert_id in ids}

    def ingest(expert_id: str) -> None:
        # One in-memory instance per run: twenty writers at once on one SQLite instance would
        # test SQLite's locking, not the pipeline.
        with watchers[expert_id].watching():
            results[expert_id] = run_ingest(settings, expert_id, dg.DagsterInstance.ephemeral()).success

    threads = [threading.Thread(target=ingest, args=(expert_id,)) for expert_id in ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    assert results == {expert_id: True for expert_id in ids}

    store = build_vector_store(settings)
    with Session(engine_for(settings.resolved_database_url)) as session:
        service = ExpertProcessingProgressService(session)
        for expert_id in ids:
            record = service.get_progress(expert_id)
            assert record is not None
            assert (record.status, record.progress_percentage, record.processed_files) == ("completed", 100.0, 1)
            assert store.count(expert_id) == record.total_chunks > 0
            percentages = [p for _, _, p in watchers[expert_id].samples]
            assert percentages == sorted(percentages), expert_id
            # No cross-talk: every match in this expert's namespace comes from its own file.
            (match,) = store.query(expert_id, [1.0] + [0.0] * 383, top_k=1)
            assert match.metadata["expert_id"] == expert_id
