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
the parsers take about 80 MB. OCR runs Tesseract as child processes of the worker, each under
the same cap of its own (about 150 MB per page at 200 dpi), so the cap needs no change for it.

Pages read by OCR are reported through a small progress file beside the page text, which this
process polls: each OCR page extends the file's deadline by OCR_SECONDS_PER_PAGE, since a
200-page scan needs minutes where a text PDF of the same size needs seconds.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import multiprocessing
import resource
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, wait
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Final, Self

from pebble import ProcessExpired, ProcessPool

from expert_pipeline.ingest.work_area import ExpertWorkArea, page_from_row
from expert_pipeline.text.extraction import ExtractionError, PageText, extract_pages


@dataclass(frozen=True)
class ExtractionLimits:
    timeout_seconds: float
    memory_mb: int


_M_ARENA_MAX = -8  # glibc's mallopt parameter number
# A page takes about 1.3 s of one core; the allowance leaves room for a machine under load.
OCR_SECONDS_PER_PAGE: Final = 20.0
_POLL_SECONDS: Final = 0.25

OcrProgressCallback = Callable[[int, int], None]  # (pages read by OCR, pages to read)


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
    progress = _progress_path(work, file_id)

    def on_ocr_page(done: int, total: int) -> None:
        partial = progress.with_suffix(".tmp")
        partial.parent.mkdir(parents=True, exist_ok=True)
        partial.write_text(json.dumps({"done": done, "total": total}))
        partial.replace(progress)  # the parent never reads a half-written file

    try:
        pages, characters = work.write_pages(
            file_id, extract_pages(Path(source), filename, on_ocr_page=on_ocr_page)
        )
    except MemoryError:
        # An allocation refused by the cap: the parser's objects are gone once this unwinds,
        # so the same worker can take the next file.
        raise ExtractionError(
            "too_large", f"too large: extraction needed more than {memory_mb} MB of memory"
        ) from None
    except RecursionError:
        raise ExtractionError("corrupt", "damaged file: its structure is nested too deeply to read") from None
    return Extracted(pages=pages, characters=characters)


def _progress_path(work: ExpertWorkArea, file_id: str) -> Path:
    return work.text_path(file_id).with_suffix(".ocr-progress")


class _PageTail:
    """Complete page lines of the page file as the worker appends them.

    The worker writes `<file>.jsonl.partial` and renames it when done; a handle opened on the
    partial file keeps reading the same file after the rename.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.partial = path.with_suffix(path.suffix + ".partial")
        self._handle: IO[str] | None = None
        self._pending = ""

    def new_pages(self) -> Iterator[PageText]:
        if self._handle is None:
            try:
                self._handle = open(self.partial, encoding="utf-8")  # noqa: SIM115 - closed in close()
            except FileNotFoundError:
                return  # not started yet, or already renamed: rest() reads the final file
        yield from self._complete_lines()

    def rest(self) -> Iterator[PageText]:
        if self._handle is None:
            self._handle = open(self.path, encoding="utf-8")  # noqa: SIM115 - closed in close()
        yield from self._complete_lines()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def _complete_lines(self) -> Iterator[PageText]:
        assert self._handle is not None
        self._pending += self._handle.read()
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            yield page_from_row(json.loads(line))


def _read_progress(path: Path) -> tuple[int, int] | None:
    try:
        data = json.loads(path.read_text())
        return int(data["done"]), int(data["total"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _ready() -> None:
    """Scheduled at start so the worker's interpreter comes up before the first file needs it."""


class IsolatedExtractor:
    """The worker process (one, reused for every file) under the limits.

    Use as a context manager, or `start()` it early (its interpreter takes a few tenths of a
    second to come up, which it can spend while other work goes on) and `stop()` it at the end.
    """

    def __init__(self, limits: ExtractionLimits) -> None:
        self.limits = limits
        self._pool: ProcessPool | None = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        if self._pool is None:
            self._pool = ProcessPool(
                max_workers=1,
                initializer=_cap_memory,
                initargs=(self.limits.memory_mb,),
                context=multiprocessing.get_context("spawn"),
            )
            self._pool.schedule(_ready)  # pebble starts its worker on the first task, not before

    def stop(self) -> None:
        if self._pool is not None:
            self._pool.stop()
            self._pool.join(timeout=10)
            self._pool = None

    def extract(
        self,
        work: ExpertWorkArea,
        file_id: str,
        source: Path,
        filename: str,
        on_ocr_page: OcrProgressCallback | None = None,
    ) -> Extracted:
        """Pages written to `work`, or ExtractionError with a reason for the user."""
        pages = characters = 0
        for page in self.stream(work, file_id, source, filename, on_ocr_page):
            pages += 1
            characters += len(page.text)
        return Extracted(pages=pages, characters=characters)

    def stream(
        self,
        work: ExpertWorkArea,
        file_id: str,
        source: Path,
        filename: str,
        on_ocr_page: OcrProgressCallback | None = None,
    ) -> Iterator[PageText]:
        """The file's pages as the worker writes them to `work`, so the caller can chunk
        (and embed) the first pages while the worker reads the next ones.

        Raises ExtractionError with a reason for the user, possibly after some pages were yielded
        (a PDF that turns out to hold no text): the caller discards what it made of them.
        `on_ocr_page(done, total)` is called here, in the caller's thread, as OCR reads pages.
        """
        assert self._pool is not None, "start the IsolatedExtractor first (or use it as a context manager)"
        progress = _progress_path(work, file_id)
        progress.unlink(missing_ok=True)
        future = self._pool.schedule(
            _extract_to_work_area,
            args=(
                str(work.dir.parent),
                work.dir.name,
                file_id,
                str(source),
                filename,
                self.limits.memory_mb,
            ),
        )
        tail = _PageTail(work.text_path(file_id))
        try:
            started = time.monotonic()
            seen: tuple[int, int] | None = None
            while not future.done():
                wait([future], timeout=_POLL_SECONDS, return_when=FIRST_COMPLETED)
                now = _read_progress(progress)
                if now is not None and now != seen:
                    seen = now
                    if on_ocr_page is not None:
                        on_ocr_page(*now)
                allowance = self.limits.timeout_seconds + OCR_SECONDS_PER_PAGE * (seen[1] if seen else 0)
                if not future.done() and time.monotonic() - started > allowance:
                    future.cancel()  # pebble ends the worker; a fresh one takes the next file
                    _discard_partial(work, file_id)
                    progress.unlink(missing_ok=True)
                    raise ExtractionError(
                        "too_large", f"too large or too complex: extraction took longer than {allowance:g} s"
                    )
                yield from tail.new_pages()
            # The last pages (or all of a short scan) may have been read between two polls.
            final = _read_progress(progress)
            progress.unlink(missing_ok=True)
            if final is not None and final != seen and on_ocr_page is not None:
                on_ocr_page(*final)
            try:
                future.result()
            except ProcessExpired as exc:
                # Killed from outside the cap's reach (the kernel's OOM killer, a parser crash in C).
                _discard_partial(work, file_id)
                raise ExtractionError(
                    "too_large",
                    f"too large or too complex: the extraction worker died reading it (exit code {exc.exitcode})",
                ) from None
            yield from tail.rest()
        finally:
            tail.close()
            if not future.done():
                future.cancel()  # the caller stopped early (cancelled): the worker need not go on


def _discard_partial(work: ExpertWorkArea, file_id: str) -> None:
    # A killed worker never reaches the cleanup of the page file it was writing.
    text = work.text_path(file_id)
    text.with_suffix(text.suffix + ".partial").unlink(missing_ok=True)
