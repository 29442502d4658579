"""Text out of user files, page by page: PDF, plain text, Markdown, HTML and DOCX.

Pure Python on purpose (no Dagster): the pipeline, the API and the tests all call it. Each format
lives in `formats/`; this module picks one by extension and is the public entry point.

`extract_pages` is a generator so a 2,000-page PDF or a 200 MB text file never sits in memory
as one string. A file that cannot be indexed raises `ExtractionError`, whose `kind` is for
machines and whose message is short enough to show to the person who uploaded the file.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Final

from expert_pipeline.text.cleaning import drop_repeated_margins
from expert_pipeline.text.formats.docx import docx_pages
from expert_pipeline.text.formats.html import html_pages
from expert_pipeline.text.formats.pdf import NO_TEXT_PDF_MESSAGE, pdf_pages
from expert_pipeline.text.formats.plain import text_pages
from expert_pipeline.text.ocr import OcrProgress
from expert_pipeline.text.pages import ExtractionError, ExtractionErrorKind, PageText, normalize_whitespace

__all__ = [
    "NO_TEXT_PDF_MESSAGE",
    "SUPPORTED_EXTENSIONS",
    "ExtractionError",
    "ExtractionErrorKind",
    "PageText",
    "extract_pages",
    "normalize_whitespace",
]

SUPPORTED_EXTENSIONS: Final[frozenset[str]] = frozenset(
    {".pdf", ".txt", ".md", ".markdown", ".html", ".htm", ".docx"}
)


def extract_pages(
    path: Path,
    filename: str | None = None,
    *,
    max_pages: int = 5000,
    warnings: list[str] | None = None,
    on_ocr_page: OcrProgress | None = None,
) -> Iterator[PageText]:
    """Yield the text of `path` page by page (1-based page numbers, whitespace normalised).

    The type comes from the extension of `filename` (the user's name for the file; defaults to
    `path.name`) and is checked against the content where that is cheap.

    Some failures can only be known at the end (a PDF with no text): pages may already have
    been yielded when `ExtractionError` is raised, so callers must consume the generator fully
    and discard what they stored if it raises.

    `warnings`, if given, receives the parser's complaints (pypdf reports several per page on
    many real PDFs); they are never written to the log one by one, only counted there.
    `on_ocr_page(done, total)` is called as each page without a text layer has been read by OCR.
    """
    path = Path(path)
    name = filename or path.name
    extension = Path(name).suffix.lower()
    if extension not in SUPPORTED_EXTENSIONS:
        raise ExtractionError("unsupported_type", _unsupported_message(extension))
    # A missing file is the pipeline's fault, not the user's: FileNotFoundError propagates.
    if path.stat().st_size == 0:
        raise ExtractionError("empty", "file is empty")

    if extension == ".pdf":
        # Only paged documents have running headers and footers.
        pages = drop_repeated_margins(pdf_pages(path, max_pages, warnings, name, on_ocr_page))
    elif extension == ".docx":
        pages = docx_pages(path, max_pages)
    elif extension in {".html", ".htm"}:
        pages = html_pages(path, max_pages)
    else:
        pages = text_pages(path, max_pages)
    yield from pages


def _unsupported_message(extension: str) -> str:
    supported = ", ".join(sorted(SUPPORTED_EXTENSIONS))
    if not extension:
        return f"file has no extension, so its type is unknown (supported: {supported})"
    return f"unsupported file type {extension} (supported: {supported})"
