"""Reading, chunking and embedding overlap: pages -> chunks -> batches.

The extraction worker's pages reach the chunker while it is still reading; full batches of
chunks are embedded on a background thread while the next ones are cut; the embedding step
then takes exactly those from the cache. Nothing here measures a time: each test blocks one
side until the other has visibly moved, which only an overlapping pipeline can do.
"""

from __future__ import annotations

import multiprocessing
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import dagster as dg
import pytest
from sqlalchemy import Engine

from expert_pipeline.core.embedding_cache import EmbeddingCache
from expert_pipeline.core.settings import Settings
from expert_pipeline.ingest.embedding_prefetch import EmbeddingPrefetch
from expert_pipeline.ingest.work_area import ExpertWorkArea
from expert_pipeline.resources.extraction_worker import ExtractionWorker
from expert_pipeline.text.chunking import Chunk
from expert_pipeline.text.isolated_extraction import ExtractionLimits, IsolatedExtractor
from tests.fixture_documents import make_pdf, sample_paragraphs
from tests.pipeline_helpers import create_expert, run_ingest
from tests.waiting import wait_for


def test_pages_reach_the_caller_while_the_worker_is_still_reading(tmp_path: Path) -> None:
    pdf = make_pdf(tmp_path / "long.pdf", ["\n\n".join(sample_paragraphs(3, seed=s)) for s in range(300)])
    work = ExpertWorkArea(tmp_path / "work", "e1")
    with IsolatedExtractor(ExtractionLimits(timeout_seconds=120, memory_mb=2048)) as extractor:
        stream = extractor.stream(work, "f1", pdf, pdf.name)
        first = next(stream)
        # The worker renames its page file only when the whole document is read.
        assert first.page == 1 and not work.text_path("f1").exists()
        rest = list(stream)
    streamed = [first, *rest]
    assert [p.page for p in streamed] == list(range(1, 301))
    assert streamed == list(work.read_pages("f1"))  # what streamed is what was stored


class _RecordingEmbedder:
    """A stand-in provider: unit vectors, and a record of every call, by thread."""

    model_name = "recording"
    dimensions = 4

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], str]] = []
        self.lock = threading.Lock()

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        with self.lock:
            self.calls.append((list(texts), threading.current_thread().name))
        return [[1.0, 0.0, 0.0, 0.0] for _ in texts]

    def take_trouble(self) -> dict[int, int]:
        return {}

    def embedded(self) -> list[str]:
        with self.lock:
            return [t for texts, _ in self.calls for t in texts]


def _chunk(i: int) -> Chunk:
    return Chunk(text=f"chunk number {i}", filename="a.pdf", page=i + 1, index=i, token_count=4)


def test_a_full_batch_is_embedded_while_the_next_chunks_are_cut(engine: Engine) -> None:
    embedder = _RecordingEmbedder()

    def chunks() -> Iterator[Chunk]:
        for i in range(3):
            yield _chunk(i)
        # The chunker goes on only once the first batch was embedded behind its back.
        wait_for("the first batch to be embedded", lambda: len(embedder.embedded()) == 3, timeout=30)
        for i in range(3, 5):
            yield _chunk(i)

    with EmbeddingPrefetch(embedder, engine, batch_size=3) as ahead:  # type: ignore[arg-type]
        passed = list(ahead.passing(chunks()))
        ahead.flush()
        wait_for("the last partial batch", lambda: len(embedder.embedded()) == 5, timeout=30)
    assert passed == [_chunk(i) for i in range(5)]  # the chunks themselves pass unchanged
    assert [texts for texts, _ in embedder.calls] == [[f"chunk number {i}" for i in r] for r in ((0, 1, 2), (3, 4))]
    assert {thread for _, thread in embedder.calls} == {"embedding-prefetch_0"}
    assert ahead.embedded == 5 and ahead.stopped_by is None
    cache = EmbeddingCache(engine, "recording", 4)
    assert len(cache.get_many(cache.keys([_chunk(i).text for i in range(5)]))) == 5


def test_a_failing_provider_stops_embedding_ahead_quietly(engine: Engine) -> None:
    class Broken(_RecordingEmbedder):
        def embed(self, texts: Sequence[str]) -> list[list[float]]:
            super().embed(texts)
            raise ConnectionError("provider down")

    embedder = Broken()
    with EmbeddingPrefetch(embedder, engine, batch_size=2) as ahead:  # type: ignore[arg-type]
        list(ahead.passing(_chunk(i) for i in range(2)))
        wait_for("the first attempt", lambda: ahead.stopped_by is not None, timeout=30)
        list(ahead.passing(_chunk(i) for i in range(2, 6)))  # later batches are not even tried
        ahead.flush()
    assert ahead.stopped_by == "ConnectionError: provider down"
    assert len(embedder.calls) == 1 and ahead.embedded == 0


def _metadata(result: dg.ExecuteInProcessResult, asset: str) -> dict[str, object]:
    (materialization,) = result.asset_materializations_for_node(asset)
    return {key: value.value for key, value in materialization.metadata.items()}


@pytest.mark.slow
def test_the_embedding_step_takes_from_the_cache_what_was_embedded_while_reading(
    settings: Settings, instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    fast = settings.model_copy(update={"embedding_batch_size": 4, "progress_min_write_interval_seconds": 0.0})
    pdf = make_pdf(tmp_path / "long.pdf", ["\n\n".join(sample_paragraphs(4, seed=s)) for s in range(80)])
    expert_id = create_expert(fast, [pdf])
    result = run_ingest(fast, expert_id, instance)
    assert result.success
    chunks, embedding = _metadata(result, "expert_chunks"), _metadata(result, "expert_embeddings")
    ahead = chunks["chunks_embedded_ahead"]
    assert isinstance(ahead, int) and 0 < ahead <= chunks["chunks"]
    # Exactly what was embedded ahead came from the cache; only the rest went to the model.
    assert embedding["chunks"] == chunks["chunks"]
    assert embedding["chunks_from_cache"] == ahead
    assert embedding["chunks_sent_to_provider"] == chunks["chunks"] - ahead

    # Switched off, nothing is embedded ahead and the embedding step does it all (cached now).
    off = fast.model_copy(update={"embed_while_reading": False})
    again = create_expert(off, [pdf], name="Same document")
    result = run_ingest(off, again, instance)
    assert result.success and _metadata(result, "expert_chunks")["chunks_embedded_ahead"] == 0


def test_the_extraction_worker_lives_as_long_as_the_reading_step() -> None:
    before = {child.pid for child in multiprocessing.active_children()}
    worker = ExtractionWorker(timeout_seconds=60, memory_mb=1024)
    with worker.reading():
        # Started as the step begins (pebble's first task), before any file is asked for.
        wait_for(
            "the extraction worker process",
            lambda: any(c.pid not in before for c in multiprocessing.active_children()),
            timeout=30,
        )
    # Done reading, the step stops it: later stages need no idle worker beside them.
    wait_for(
        "the worker to be gone",
        lambda: all(c.pid in before for c in multiprocessing.active_children()),
        timeout=30,
    )
