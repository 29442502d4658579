"""Text extraction of one file at a time in a worker process, under a time and a memory limit.

Parsers meet hostile input: a PDF whose content stream inflates to gigabytes, a page tree
that sends the parser in circles, nesting deep enough to exhaust the stack. In the run's own
process such a file would take the whole expert down (or the machine's memory with it). Here
each file is extracted in a worker process (pebble) whose address space is capped
(RLIMIT_AS) and whose task is killed after a deadline; that file then fails alone with a
reason, the worker is replaced, and the expert's other files go on.

The worker is started once per run (spawn, so it imports only this module and the parsers,
never torch or numpy) and reused for every file, so the isolation costs well under a second
per run. The memory cap is on the worker's whole address space, of which the interpreter and
the parsers take about 80 MB.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import resource
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from pebble import ProcessExpired, ProcessPool

from expert_pipeline.ingest.work_area import ExpertWorkArea
from expert_pipeline.text.extraction import ExtractionError, extract_pages


@dataclass(frozen=True)
class ExtractionLimits:
    timeout_seconds: float
    memory_mb: int


_M_ARENA_MAX = -8  # glibc's mallopt parameter number


@dataclass(frozen=True)
class Extracted:
    pages: int
    characters: int


def _cap_memory(memory_mb: int) -> None:
    # One malloc arena: each extra thread's arena reserves 64 MB of address space, which would
    # make the cap bite earlier or later depending on how threads happened to allocate.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").mallopt(_M_ARENA_MAX, 1)
    limit = memory_mb * 1024 * 1024
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)  # a soft limit above the hard one is refused
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def _extract_to_work_area(
    work_dir: str, expert_id: str, file_id: str, source: str, filename: str, memory_mb: int
) -> Extracted:
    work = ExpertWorkArea(Path(work_dir), expert_id)
    try:
        pages, characters = work.write_pages(file_id, extract_pages(Path(source), filename))
    except MemoryError:
        # An allocation refused by the cap: the parser's objects are gone once this unwinds,
        # so the same worker can take the next file.
        raise ExtractionError(
            "too_large", f"too large: extraction needed more than {memory_mb} MB of memory"
        ) from None
    except RecursionError:
        raise ExtractionError("corrupt", "damaged file: its structure is nested too deeply to read") from None
    return Extracted(pages=pages, characters=characters)


class IsolatedExtractor:
    """Use as a context manager around one run's extraction of all its files."""

    def __init__(self, work: ExpertWorkArea, limits: ExtractionLimits) -> None:
        self.work = work
        self.limits = limits
        self._pool: ProcessPool | None = None

    def __enter__(self) -> Self:
        self._pool = ProcessPool(
            max_workers=1,
            initializer=_cap_memory,
            initargs=(self.limits.memory_mb,),
            context=multiprocessing.get_context("spawn"),
        )
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._pool is not None:
            self._pool.stop()
            self._pool.join(timeout=10)
            self._pool = None

    def extract(self, file_id: str, source: Path, filename: str) -> Extracted:
        """Pages written to the work area, or ExtractionError with a reason for the user."""
        assert self._pool is not None, "use IsolatedExtractor as a context manager"
        future = self._pool.schedule(
            _extract_to_work_area,
            args=(
                str(self.work.dir.parent),
                self.work.dir.name,
                file_id,
                str(source),
                filename,
                self.limits.memory_mb,
            ),
            timeout=self.limits.timeout_seconds,
        )
        try:
            return future.result()
        except FutureTimeout:
            # pebble has killed the worker; a fresh one takes the next file.
            self._discard_partial(file_id)
            raise ExtractionError(
                "too_large",
                f"too large or too complex: extraction took longer than {self.limits.timeout_seconds:g} s",
            ) from None
        except ProcessExpired as exc:
            # Killed from outside the cap's reach (the kernel's OOM killer, a parser crash in C).
            self._discard_partial(file_id)
            raise ExtractionError(
                "too_large",
                f"too large or too complex: the extraction worker died reading it (exit code {exc.exitcode})",
            ) from None

    def _discard_partial(self, file_id: str) -> None:
        # A killed worker never reaches the cleanup of the page file it was writing.
        text = self.work.text_path(file_id)
        text.with_suffix(text.suffix + ".partial").unlink(missing_ok=True)
