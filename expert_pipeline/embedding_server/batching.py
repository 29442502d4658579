"""Concurrent embedding requests coalesced into shared forward passes.

Requests from several runs (and the chat's query embeddings) arrive at once; one encoder thread
takes everything waiting, up to a cap, and encodes it together: fuller batches, one model in
memory, and no two threads fighting over the cores or the tokenizer."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

Encode = Callable[[Sequence[str]], np.ndarray]


@dataclass
class _Job:
    texts: list[str]
    future: Future[np.ndarray] = field(default_factory=Future)


class CoalescingEncoder:
    def __init__(self, encode: Encode, max_texts_per_pass: int = 256) -> None:
        self._encode = encode
        self._max_texts = max_texts_per_pass
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._thread = threading.Thread(target=self._serve, name="embedding-encoder", daemon=True)
        self._thread.start()

    def submit(self, texts: Sequence[str]) -> Future[np.ndarray]:
        """A future of the texts' vectors (one float32 row per text, in order)."""
        job = _Job(list(texts))
        self._jobs.put(job)
        return job.future

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join(timeout=30)

    def _serve(self) -> None:
        while True:
            first = self._jobs.get()
            if first is None:
                return
            jobs, total = [first], len(first.texts)
            # Whatever else is already waiting joins this pass (a big job is never split).
            while total < self._max_texts:
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    self._jobs.put(None)
                    break
                jobs.append(job)
                total += len(job.texts)
            self._run(jobs)

    def _run(self, jobs: list[_Job]) -> None:
        try:
            vectors = self._encode([text for job in jobs for text in job.texts])
        except Exception as exc:  # noqa: BLE001 - each waiting request gets the failure
            for job in jobs:
                job.future.set_exception(exc)
            return
        start = 0
        for job in jobs:
            job.future.set_result(vectors[start : start + len(job.texts)])
            start += len(job.texts)
