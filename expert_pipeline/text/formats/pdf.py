"""PDF (pypdf): one page of text per page, within pypdf's safety limits and a page-count limit.

Parser warnings go to the caller's list and are counted in one log line, never logged one by one.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Final

from expert_pipeline.text.cleaning import join_hyphenated, split_columns
from expert_pipeline.text.ocr import OcrProgress, find_engine, ocr_pdf_pages, require_engine
from expert_pipeline.text.pages import ExtractionError, PageText, non_space_chars, normalize_whitespace

if TYPE_CHECKING:
    from pypdf import PdfReader

logger = logging.getLogger(__name__)

# A scan often still yields a page number or stray word per page; below this it holds nothing to index.
MIN_PDF_CHARS: Final = 20
MIN_PDF_CHARS_PER_PAGE: Final = 10

NO_TEXT_PDF_MESSAGE: Final = "no extractable text (scanned or image-only document?)"
NO_TEXT_AFTER_OCR_MESSAGE: Final = (
    "no extractable text: its pages are images in which OCR found no text (photographs or drawings?)"
)
# A text layer where fewer than this share of characters are letters or digits is debris of a
# broken font encoding, not text: such a page is read by OCR instead.
MIN_READABLE_SHARE: Final = 0.5
_NESTED_TOO_DEEPLY: Final = "its structure is nested too deeply to read"


def pdf_pages(
    path: Path,
    max_pages: int,
    warnings: list[str] | None,
    filename: str,
    on_ocr_page: OcrProgress | None = None,
) -> Iterator[PageText]:
    sink = _WarningSink(warnings)
    with path.open("rb") as handle:
        if b"%PDF-" not in handle.read(1024):
            raise ExtractionError("corrupt", "not a valid PDF file (no PDF header)")
        handle.seek(0)
        _install_pypdf_log_router()
        try:
            yield from _read_pdf(path, handle, max_pages, sink, on_ocr_page)
        finally:
            if sink.count:
                logger.info("pypdf reported %d warnings while reading %s", sink.count, filename)


# --- pypdf's log records, collected per extraction --------------------------------------------


class _WarningSink:
    """Counts parser warnings; keeps their text only if the caller asked for it."""

    def __init__(self, messages: list[str] | None) -> None:
        self.messages = messages
        self.count = 0

    def add(self, message: str) -> None:
        self.count += 1
        if self.messages is not None:
            self.messages.append(message)


_pdf_log_sink: contextvars.ContextVar[_WarningSink | None] = contextvars.ContextVar(
    "pdf_log_sink", default=None
)
_router_lock = threading.Lock()
_router_installed = False


class _PypdfLogRouter(logging.Handler):
    """Sends pypdf's records to the current extraction's collector instead of the console.

    A handler on "pypdf" sees its child loggers' records, which a filter there would not.
    Outside an extraction, records continue to the root logger as they would have.
    """

    def emit(self, record: logging.LogRecord) -> None:
        sink = _pdf_log_sink.get()
        if sink is None:
            logging.getLogger().handle(record)
        elif record.levelno >= logging.WARNING:
            sink.add(record.getMessage())


def _install_pypdf_log_router() -> None:
    global _router_installed
    with _router_lock:
        if _router_installed:
            return
        pypdf_logger = logging.getLogger("pypdf")
        pypdf_logger.addHandler(_PypdfLogRouter())
        pypdf_logger.propagate = False
        _router_installed = True


@contextlib.contextmanager
def _collect_pypdf_logs(sink: _WarningSink) -> Iterator[None]:
    # Around each pypdf call, never across a yield: the caller's context must not keep this collector.
    token = _pdf_log_sink.set(sink)
    try:
        yield
    finally:
        _pdf_log_sink.reset(token)


# --- reading ----------------------------------------------------------------------------------


def _read_pdf(
    path: Path, handle: IO[bytes], max_pages: int, warnings: _WarningSink, on_ocr_page: OcrProgress | None
) -> Iterator[PageText]:
    reader, page_count = _open_pdf(handle, warnings, max_pages)
    if page_count > max_pages:
        raise ExtractionError("too_large", f"too large: {page_count} pages (the limit is {max_pages})")
    characters = 0
    unreadable: list[str] = []
    to_ocr: list[int] = []
    ocr_failures: list[str] = []
    held: list[PageText] = []  # pages after the first one to OCR, waiting for it to keep the order
    for number in range(1, page_count + 1):
        unreadable_before = len(unreadable)
        text = _pdf_page_text(reader, number, warnings, unreadable)
        page = PageText(page=number, text=text)
        if len(unreadable) == unreadable_before and _needs_ocr(reader, number, text, warnings):
            to_ocr.append(number)
        else:
            characters += non_space_chars(text)
        # Blank pages are yielded too, so page numbers and counts match the document.
        if to_ocr:
            held.append(page)
        else:
            yield page
    if len(unreadable) == page_count:
        raise ExtractionError("corrupt", f"damaged PDF: no page could be read ({unreadable[0]})")
    enough = max(MIN_PDF_CHARS, MIN_PDF_CHARS_PER_PAGE * page_count)
    if to_ocr:
        # Without OCR a document that is mostly text still indexes its text pages.
        engine = require_engine() if characters < enough else find_engine()
        if engine is not None:
            try:
                read = dict(ocr_pdf_pages(path, to_ocr, engine, on_ocr_page, ocr_failures))
            except (MemoryError, ExtractionError):
                raise
            except Exception as exc:  # pdfium refusing a file pypdf could open
                raise ExtractionError(
                    "corrupt", f"damaged PDF: its pages cannot be rendered for OCR ({exc.__class__.__name__})"
                ) from exc
            held = [_ocr_page(page, read.get(page.page)) for page in held]
            characters += sum(non_space_chars(read[n]) for n in to_ocr if n in read)
        yield from held
    if characters < enough and ocr_failures:
        raise ExtractionError(
            "no_text",
            f"no extractable text: OCR failed on {len(ocr_failures)} of {len(to_ocr)} pages ({ocr_failures[0]})",
        )
    if characters < enough:
        raise ExtractionError("no_text", NO_TEXT_AFTER_OCR_MESSAGE if to_ocr else NO_TEXT_PDF_MESSAGE)


def _ocr_page(page: PageText, ocr_text: str | None) -> PageText:
    if ocr_text is None:
        return page
    return PageText(page=page.page, text=normalize_whitespace(join_hyphenated(ocr_text)))


def _needs_ocr(reader: PdfReader, number: int, text: str, warnings: _WarningSink) -> bool:
    """A page whose text layer is missing or debris, and that shows an image a scan would be."""
    chars = non_space_chars(text)
    if chars >= MIN_PDF_CHARS_PER_PAGE:
        # Letters and digits are ~80 % of prose and tables; glyph-id debris is mostly symbols.
        readable = sum(1 for c in text if c.isalnum()) / chars
        if readable >= MIN_READABLE_SHARE:
            return False
    with _collect_pypdf_logs(warnings):
        try:
            return _has_images(reader.pages[number - 1])
        except MemoryError:
            raise
        except Exception:  # noqa: BLE001 - unreadable resources: nothing to OCR
            return False


def _has_images(page: object) -> bool:
    """Whether the page draws an image (or a form XObject, which may hold one)."""
    resources = page.get("/Resources")  # type: ignore[attr-defined]
    resources = resources.get_object() if resources is not None else None
    objects = resources.get("/XObject") if resources is not None else None
    objects = objects.get_object() if objects is not None else None
    if not objects:
        return b"BI" in page.get_contents().get_data() if page.get_contents() else False  # type: ignore[attr-defined]
    return any(objects[name].get_object().get("/Subtype") in ("/Image", "/Form") for name in objects)


def _beyond_reader_limits(exc: Exception, where: str = "") -> ExtractionError:
    # A file past pypdf's own safety limits (huge streams, page trees, arrays) is too big, not damaged.
    return ExtractionError("too_large", f"too large: {where}beyond the PDF reader's safety limits ({exc})")


def _unreadable_page_list(exc: Exception) -> ExtractionError:
    from pypdf.errors import LimitReachedError

    if isinstance(exc, LimitReachedError):
        return _beyond_reader_limits(exc)
    # pypdf wraps the RecursionError of a deeply nested object in its own read error.
    if isinstance(exc, RecursionError) or isinstance(exc.__context__, RecursionError):
        return ExtractionError("corrupt", f"damaged PDF: {_NESTED_TOO_DEEPLY}")
    return ExtractionError("corrupt", f"damaged PDF: cannot read its page list ({exc})")


def _declared_page_count(reader: PdfReader) -> int | None:
    """The page tree's own /Count, read without walking the tree (the page list does that)."""
    from pypdf.generic import DictionaryObject

    pages = reader.root_object.get("/Pages")
    pages = pages.get_object() if pages is not None else None
    count = pages.get("/Count") if isinstance(pages, DictionaryObject) else None
    return int(count) if isinstance(count, int) else None


def _open_pdf(handle: IO[bytes], warnings: _WarningSink, max_pages: int) -> tuple[PdfReader, int]:
    from pypdf import PasswordType, PdfReader
    from pypdf.errors import LimitReachedError, PdfReadError

    with _collect_pypdf_logs(warnings):
        try:
            reader = PdfReader(handle, strict=False)
        except MemoryError:
            raise
        except LimitReachedError as exc:
            raise _beyond_reader_limits(exc) from exc
        except PdfReadError as exc:
            raise ExtractionError("corrupt", f"damaged PDF: {exc}") from exc
        except Exception as exc:  # malformed files surface as any exception type
            raise ExtractionError("corrupt", f"damaged PDF: {exc.__class__.__name__}") from exc
        if reader.is_encrypted:
            # Many PDFs are "encrypted" only to restrict printing; they open with no password.
            try:
                unlocked = reader.decrypt("") != PasswordType.NOT_DECRYPTED
            except Exception:  # noqa: BLE001 - unknown algorithms etc.: treat as locked
                unlocked = False
            if not unlocked:
                raise ExtractionError(
                    "encrypted", "password-protected PDF: cannot be read without its password"
                )
        try:
            # Walking a huge page tree takes seconds, so a file declaring too many pages is taken at its word.
            declared = _declared_page_count(reader)
            if declared is not None and declared > max_pages:
                raise ExtractionError("too_large", f"too large: {declared} pages (the limit is {max_pages})")
            page_count = len(reader.pages)
        except (MemoryError, ExtractionError):
            raise
        except Exception as exc:  # any error here means the page list is unreadable
            # Reported at the first failure: a second attempt at a half-read object reads as a loop.
            raise _unreadable_page_list(exc) from exc
    if page_count == 0:
        raise ExtractionError("corrupt", "damaged PDF: it has no pages")
    return reader, page_count


def _pdf_page_text(reader: PdfReader, number: int, warnings: _WarningSink, unreadable: list[str]) -> str:
    """One page's normalised text; a page pypdf cannot parse counts as blank, not fatal."""
    from pypdf.errors import LimitReachedError

    with _collect_pypdf_logs(warnings):
        try:
            raw = _page_text(reader.pages[number - 1])
        except MemoryError:
            raise
        except LimitReachedError as exc:
            raise _beyond_reader_limits(exc, f"page {number} is ") from exc
        except Exception as exc:  # noqa: BLE001 - one broken page must not lose the others
            nested = isinstance(exc, RecursionError)
            reason = f"page {number}: " + (
                _NESTED_TOO_DEEPLY if nested else f"{exc.__class__.__name__}: {exc}"
            )
            warnings.add(reason)
            unreadable.append(reason)
            return ""
    return normalize_whitespace(join_hyphenated(raw))


def _page_text(page: object) -> str:
    """Text in reading order: layout mode keeps columns apart and table rows on one line."""
    try:
        layout = page.extract_text(extraction_mode="layout")  # type: ignore[attr-defined]
    except (MemoryError, RecursionError):
        raise
    except Exception:  # noqa: BLE001 - layout mode trips on some fonts where plain mode reads them
        return page.extract_text() or ""  # type: ignore[attr-defined]
    return split_columns(layout or "")
