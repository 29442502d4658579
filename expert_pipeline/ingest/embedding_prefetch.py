"""Embedding chunks while the next pages are still being read (overlapping stages).

The text-extraction step hands each full batch of new chunks to one background thread, which
embeds it into the embedding cache; the embedding step then finds those chunks cached and only
embeds what the reading outran. So a long document's wall time approaches its embedding time,
while the stages, their order and their progress stay what the specification says.

A failure stops the prefetching quietly (the embedding step meets the same provider and reports
it with its retries and reasons), and the chunks not embedded yet are simply embedded by the
embedding step. Retries the provider needed for batches that succeeded here are kept per batch
(`take_batch_trouble`) for the caller's thread to report, as the embedding step reports its own.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType
from typing import Self

from sqlalchemy import Engine

from expert_pipeline.core.embedding_cache import EmbeddingCache, embed_with_cache
from expert_pipeline.core.ports import Embedder
from expert_pipeline.text.chunking import Chunk

log = logging.getLogger(__name__)

# The work-area note in which the reading step leaves a provider-trouble episode still open.
PROVIDER_TROUBLE_NOTE = "provider_trouble_ahead"


class EmbeddingPrefetch:
    """Use as a context manager around the reading of one run's files.

    On exit, batches not started yet are dropped and the one being embedded is waited for, so the
    embedding step never shares the embedder with this thread.
    """

    def __init__(self, embedder: Embedder, engine: Engine, batch_size: int) -> None:
        self.embedder = embedder
        self.engine = engine
        self.batch_size = batch_size
        self._cache: EmbeddingCache | None = None
        self.embedded = 0  # chunks whose vectors are in the cache thanks to this
        self.stopped_by: str | None = None  # why prefetching stopped early, for the run's log
        self._waiting: list[str] = []
        self._trouble: list[dict[int, int]] = []  # per embedded batch: retried answers by HTTP status
        self._trouble_lock = threading.Lock()
        self._futures: list[Future[None]] = []
        self._stop = threading.Event()
        self._executor: ThreadPoolExecutor | None = None

    def __enter__(self) -> Self:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embedding-prefetch")
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Drop the batches not started, wait for the one being embedded (idempotent)."""
        self._stop.set()
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    def passing(self, chunks: Iterable[Chunk]) -> Iterator[Chunk]:
        """`chunks` unchanged, their texts queued for embedding a batch at a time."""
        for chunk in chunks:
            self._waiting.append(chunk.text)
            if len(self._waiting) >= self.batch_size:
                self._submit()
            yield chunk

    def flush(self) -> None:
        """Queue the last partial batch (a file's chunks are complete)."""
        if self._waiting:
            self._submit()

    def discard(self) -> None:
        """Forget queued texts of a file that failed after some of its pages were read."""
        self._waiting.clear()

    def take_batch_trouble(self) -> list[dict[int, int]]:
        """Each batch embedded since the last call: the provider's retried answers (often none)."""
        with self._trouble_lock:
            taken, self._trouble = self._trouble, []
        return taken

    def _submit(self) -> None:
        texts, self._waiting = self._waiting, []
        if self._executor is None or self._stop.is_set():
            return
        self._futures = [f for f in self._futures if not f.done()]
        self._futures.append(self._executor.submit(self._embed, texts))

    def _embed(self, texts: list[str]) -> None:
        if self._stop.is_set():
            return
        try:
            if self._cache is None:
                # Here, not in the caller: a local model loads on this thread while pages are read.
                self._cache = EmbeddingCache(self.engine, self.embedder.model_name, self.embedder.dimensions)
            embed_with_cache(self.embedder, self._cache, texts)
        except Exception as exc:  # noqa: BLE001 - the embedding step meets it again and reports it
            self.embedder.take_trouble()  # the embedding step's retries will tell the story
            self.stopped_by = f"{exc.__class__.__name__}: {exc}"
            self._stop.set()
            log.info("embedding ahead stopped: %s", self.stopped_by)
            return
        trouble = self.embedder.take_trouble()
        with self._trouble_lock:
            self._trouble.append(trouble)
        self.embedded += len(texts)
