"""OCR of PDF pages that have no usable text layer: pdfium renders, Tesseract reads.

Tesseract (Debian's tesseract-ocr with the eng and deu models) was chosen over RapidOCR's ONNX
models by measurement (bench/ocr_quality.py): both read 200-dpi scans of printed English and
German without error, Tesseract about 3.5x faster on this CPU (0.8 vs 0.2 pages/s per core).
Each page is one `tesseract` process reading a PNG on stdin, one per core at a time, so pages
are read in parallel while pdfium (not thread-safe) renders the next ones in this thread.

Words Tesseract is unsure of are dropped: on a photograph it "reads" noise as short junk words,
which would otherwise make an image index as text.
"""

from __future__ import annotations

import csv
import functools
import io
import os
import shutil
import subprocess
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from expert_pipeline.text.cleaning import split_columns
from expert_pipeline.text.pages import ExtractionError

OCR_DPI: Final = 200
# Languages used when their models are installed; Tesseract reads a mixed page with both.
PREFERRED_LANGUAGES: Final = ("eng", "deu")
# Words below this confidence (0-100) are noise more often than text.
MIN_WORD_CONFIDENCE: Final = 50.0
# One page of Tesseract should never take this long; a page that does is skipped, not waited for.
PAGE_TIMEOUT_SECONDS: Final = 120.0
INSTALL_HINT: Final = "tesseract-ocr tesseract-ocr-eng tesseract-ocr-deu"
UNAVAILABLE_MESSAGE: Final = (
    f"OCR unavailable: install {INSTALL_HINT} (Debian packages) to read scanned pages"
)

OcrProgress = Callable[[int, int], None]  # (pages read, pages to read)


@dataclass(frozen=True)
class OcrEngine:
    binary: str
    languages: str  # Tesseract's "eng+deu"


@functools.cache
def find_engine() -> OcrEngine | None:
    """Tesseract and its language models, or None when it is not installed."""
    binary = shutil.which("tesseract")
    if binary is None:
        return None
    try:
        listed = subprocess.run(
            [binary, "--list-langs"], capture_output=True, text=True, timeout=30, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    installed = {line.strip() for line in listed.splitlines()[1:]}
    languages = [lang for lang in PREFERRED_LANGUAGES if lang in installed]
    if not languages:
        return None
    return OcrEngine(binary=binary, languages="+".join(languages))


def require_engine() -> OcrEngine:
    engine = find_engine()
    if engine is None:
        raise ExtractionError("no_text", UNAVAILABLE_MESSAGE)
    return engine


def ocr_workers() -> int:
    return max(1, min(4, len(os.sched_getaffinity(0))))


def ocr_pdf_pages(
    path: Path,
    numbers: list[int],
    engine: OcrEngine,
    on_page: OcrProgress | None = None,
    failures: list[str] | None = None,
) -> Iterator[tuple[int, str]]:
    """(page number, text) for each 1-based page in `numbers`, in order.

    A page Tesseract could not read yields "" and its reason goes to `failures`.
    """
    import pypdfium2 as pdfium

    document = pdfium.PdfDocument(str(path))
    try:
        pngs = (_render_png(document, number) for number in numbers)
        for done, (number, (text, failure)) in enumerate(
            _read_in_parallel(zip(numbers, pngs), engine), start=1
        ):
            if failure is not None and failures is not None:
                failures.append(f"page {number}: {failure}")
            if on_page is not None:
                on_page(done, len(numbers))
            yield number, text
    finally:
        document.close()


def _render_png(document: object, number: int) -> bytes:
    page = document[number - 1]  # type: ignore[index]
    try:
        bitmap = page.render(scale=OCR_DPI / 72, grayscale=True)
        image = bitmap.to_pil()
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return buffer.getvalue()
    finally:
        page.close()


def _read_in_parallel(
    pages: Iterable[tuple[int, bytes]], engine: OcrEngine
) -> Iterator[tuple[int, tuple[str, str | None]]]:
    workers = ocr_workers()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ocr") as pool:
        pending: deque[tuple[int, Future[tuple[str, str | None]]]] = deque()
        for number, png in pages:
            pending.append((number, pool.submit(ocr_png, png, engine)))
            # One rendered page waiting per worker: enough to keep them busy, bounded in memory.
            while len(pending) > workers:
                first, future = pending.popleft()
                yield first, future.result()
        while pending:
            first, future = pending.popleft()
            yield first, future.result()


def ocr_png(png: bytes, engine: OcrEngine) -> tuple[str, str | None]:
    """Text of one page image (lines kept, paragraphs apart), and why it failed if it did."""
    # One thread per Tesseract process: pages run in parallel instead, which scales better.
    env = {**os.environ, "OMP_THREAD_LIMIT": "1"}
    try:
        result = subprocess.run(
            [engine.binary, "stdin", "stdout", "-l", engine.languages, "--psm", "4", "tsv"],
            input=png,
            capture_output=True,
            timeout=PAGE_TIMEOUT_SECONDS,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return "", f"OCR took longer than {PAGE_TIMEOUT_SECONDS:g} s"
    if result.returncode != 0:
        # Under a memory cap too small for it (it needs ~150 MB), Tesseract fails to allocate.
        said = result.stderr.decode("utf-8", errors="replace").strip().splitlines()
        return "", f"Tesseract failed (exit code {result.returncode}{': ' + said[-1] if said else ''})"
    return _text_from_tsv(result.stdout.decode("utf-8", errors="replace")), None


def _text_from_tsv(tsv: str) -> str:
    """Lines of confident words, each placed at its position on the page, then read by column.

    Tesseract runs with --psm 4 (one column of text): its own column finder (--psm 3) takes
    the wide gaps of justified text for gutters and reads a page in shreds. Columns are found
    here instead, from where the words sit, as for text layers (cleaning.split_columns).
    """
    lines: dict[tuple[str, str, str], list[tuple[int, str]]] = {}
    widths: list[float] = []
    for row in csv.DictReader(io.StringIO(tsv), delimiter="\t", quoting=csv.QUOTE_NONE):
        word = (row.get("text") or "").strip()
        try:
            confidence = float(row.get("conf") or -1)
            left, width = int(row["left"]), int(row["width"])
        except (ValueError, KeyError, TypeError):
            continue
        if not word or confidence < MIN_WORD_CONFIDENCE or not any(c.isalnum() for c in word):
            continue
        lines.setdefault((row["block_num"], row["par_num"], row["line_num"]), []).append((left, word))
        widths.append(width / len(word))
    if not lines:
        return ""
    char_width = max(sorted(widths)[len(widths) // 2], 1.0)  # the median glyph width
    rows: list[str] = []
    paragraph: tuple[str, str] | None = None
    for (block, par, _), words in lines.items():
        if paragraph is not None and (block, par) != paragraph:
            rows.append("")  # a paragraph break, as in text layers
        paragraph = (block, par)
        placed = ""
        for left, word in sorted(words):
            column = int(left / char_width)
            placed += " " * max(column - len(placed), 1 if placed else 0) + word
        rows.append(placed)
    return split_columns("\n".join(rows))
