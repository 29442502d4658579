"""Text out of user files, page by page: PDF (pypdf), plain text, Markdown, HTML and DOCX.

Pure Python on purpose (no Dagster): the pipeline, the API and the tests all call it.

`extract_pages` is a generator so a 2,000-page PDF or a 200 MB text file never sits in memory
as one string. A file that cannot be indexed raises `ExtractionError`, whose `kind` is for
machines and whose message is short enough to show to the person who uploaded the file.
"""

from __future__ import annotations

import codecs
import contextlib
import contextvars
import logging
import re
import threading
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Final, Literal

if TYPE_CHECKING:
    # Parsers are imported where used, so importing this module (the API does, for
    # SUPPORTED_EXTENSIONS) stays cheap.
    from docx.document import Document as DocxDocument
    from docx.table import Table
    from pypdf import PdfReader

logger = logging.getLogger(__name__)

ExtractionErrorKind = Literal["encrypted", "corrupt", "no_text", "empty", "unsupported_type", "too_large"]

SUPPORTED_EXTENSIONS: Final[frozenset[str]] = frozenset(
    {".pdf", ".txt", ".md", ".markdown", ".html", ".htm", ".docx"}
)

# Non-paged formats are cut into sections of about this many characters, so huge text files
# stream and so a "page" in a citation still narrows the place down.
SECTION_CHARS: Final = 10_000

# A scanned PDF often still yields a page number or a stray word per page; below these amounts
# the document holds nothing worth indexing.
MIN_PDF_CHARS: Final = 20
MIN_PDF_CHARS_PER_PAGE: Final = 10

# Enough bytes to recognise a format or binary content without reading a whole file.
SNIFF_BYTES: Final = 64 * 1024

NO_TEXT_PDF_MESSAGE: Final = "no extractable text (scanned or image-only document?)"


@dataclass(frozen=True)
class PageText:
    page: int  # 1-based; for non-paged formats the number of a ~10,000-character section
    text: str


class ExtractionError(Exception):
    """A file that cannot be indexed; str(e) is a short human-readable reason shown to users."""

    def __init__(self, kind: ExtractionErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind: ExtractionErrorKind = kind

    def __repr__(self) -> str:
        return f"ExtractionError(kind={self.kind!r}, message={str(self)!r})"

    def __reduce__(self) -> tuple[type[ExtractionError], tuple[str, str]]:
        # Default exception pickling passes only the message back to __init__; keep the kind
        # too, so the error survives a trip between processes.
        return (type(self), (self.kind, str(self)))


def extract_pages(
    path: Path,
    filename: str | None = None,
    *,
    max_pages: int = 5000,
    warnings: list[str] | None = None,
) -> Iterator[PageText]:
    """Yield the text of `path` page by page (1-based page numbers, whitespace normalised).

    The type comes from the extension of `filename` (the user's name for the file; defaults to
    `path.name`) and is checked against the content where that is cheap.

    Some failures can only be known at the end (a PDF with no text): pages may already have
    been yielded when `ExtractionError` is raised, so callers must consume the generator fully
    and discard what they stored if it raises.

    `warnings`, if given, receives the parser's complaints (pypdf reports several per page on
    many real PDFs); they are never written to the log one by one, only counted there.
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
        pages = _pdf_pages(path, max_pages, _WarningSink(warnings), name)
    elif extension == ".docx":
        pages = _limit_pages(_sections(_docx_blocks(path), "\n\n"), max_pages)
    elif extension in {".html", ".htm"}:
        pages = _limit_pages(_sections(_PARAGRAPH_BREAK.split(_html_text(path)), "\n\n"), max_pages)
    else:
        pages = _limit_pages(_sections(_text_lines(path), ""), max_pages)
    yield from pages


def _unsupported_message(extension: str) -> str:
    supported = ", ".join(sorted(SUPPORTED_EXTENSIONS))
    if not extension:
        return f"file has no extension, so its type is unknown (supported: {supported})"
    return f"unsupported file type {extension} (supported: {supported})"


# --- whitespace -------------------------------------------------------------------------------

# Control characters other than tab and newline only appear through broken encodings or
# extraction artefacts; NUL in particular breaks PostgreSQL text columns.
_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f\u200b\ufeff]")
_HORIZONTAL_SPACE = re.compile(r"[^\S\n]+")
_MANY_NEWLINES = re.compile(r"\n{3,}")
_PARAGRAPH_BREAK = re.compile(r"\n[^\S\n]*\n")


def normalize_whitespace(text: str) -> str:
    """One space between words, at most one blank line between paragraphs, no NULs."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\f", "\n\n")
    text = _CONTROL_CHARS.sub("", text)
    text = _HORIZONTAL_SPACE.sub(" ", text)
    text = "\n".join(line.strip() for line in text.split("\n"))
    return _MANY_NEWLINES.sub("\n\n", text).strip()


def _non_space_chars(text: str) -> int:
    return len(text) - sum(1 for c in text if c.isspace())


# --- sections for non-paged formats -----------------------------------------------------------


def _sections(pieces: Iterable[str], joiner: str) -> Iterator[PageText]:
    """Group text pieces into normalised sections of about SECTION_CHARS characters.

    A section ends at a piece boundary, so paragraphs (or lines) stay whole where possible.
    Raises no_text when nothing but whitespace came out.
    """
    number = 0
    buffer: list[str] = []
    size = 0
    for piece in _bounded(pieces):
        buffer.append(piece)
        size += len(piece) + len(joiner)
        if size >= SECTION_CHARS:
            text = normalize_whitespace(joiner.join(buffer))
            buffer, size = [], 0
            if text:  # whitespace-only sections would only leave gaps in the numbering
                number += 1
                yield PageText(page=number, text=text)
    text = normalize_whitespace(joiner.join(buffer))
    if text:
        number += 1
        yield PageText(page=number, text=text)
    if number == 0:
        raise ExtractionError("no_text", "no text found in the file (only whitespace or markup)")


def _bounded(pieces: Iterable[str]) -> Iterator[str]:
    """Pieces no longer than about SECTION_CHARS, cut at whitespace so words stay whole."""
    for piece in pieces:
        while len(piece) > 2 * SECTION_CHARS:
            cut = max(piece.rfind(" ", 0, SECTION_CHARS), piece.rfind("\n", 0, SECTION_CHARS))
            cut = cut + 1 if cut > SECTION_CHARS // 2 else SECTION_CHARS
            yield piece[:cut]
            piece = piece[cut:]
        yield piece


def _limit_pages(pages: Iterator[PageText], max_pages: int) -> Iterator[PageText]:
    for page in pages:
        if page.page > max_pages:
            raise ExtractionError("too_large", f"too large: more than {max_pages} pages of text")
        yield page


# --- plain text and Markdown ------------------------------------------------------------------


_CONTROL_BYTES = bytes(b for b in range(32) if b not in b"\t\n\r\f")


def _looks_binary(sample: bytes) -> bool:
    if b"\x00" in sample:
        return True
    # Without NULs, a file is still binary if control bytes are common (latin-1 would
    # "decode" it into garbage that gets indexed).
    control = len(sample) - len(sample.translate(None, _CONTROL_BYTES))
    return bool(sample) and control / len(sample) > 0.05


def _text_encoding(path: Path) -> str:
    """UTF-16 with a BOM, else utf-8-sig when the whole file decodes as UTF-8, else latin-1.

    Files with NUL bytes (and no UTF-16 BOM) or many control bytes are binary and rejected.

    The whole file is scanned (in blocks) because a decoding error halfway would otherwise
    surface after half the pages were already yielded.
    """
    with path.open("rb") as handle:
        head = handle.read(4)
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"  # its NUL bytes are text; the BOM says so
    decoder = codecs.getincrementaldecoder("utf-8")()
    with path.open("rb") as handle:
        first = True
        utf8 = True
        while block := handle.read(SNIFF_BYTES):
            if _looks_binary(block) if first else b"\x00" in block:
                raise ExtractionError("unsupported_type", "binary content, not text")
            first = False
            if utf8:
                try:
                    decoder.decode(block)
                except UnicodeDecodeError:
                    utf8 = False
        if utf8:
            try:
                decoder.decode(b"", final=True)
            except UnicodeDecodeError:
                utf8 = False
    return "utf-8-sig" if utf8 else "latin-1"


def _text_lines(path: Path) -> Iterator[str]:
    encoding = _text_encoding(path)
    carry = ""
    with path.open("r", encoding=encoding, newline="") as handle:
        # A bounded readline keeps a file without line breaks from becoming one huge string;
        # the word it cut in two is carried over so no word is split across sections.
        while line := handle.readline(SECTION_CHARS):
            line, carry = carry + line, ""
            if not line.endswith(("\n", "\r")):
                cut = max(line.rfind(" "), line.rfind("\t"))
                if cut > 0:
                    line, carry = line[: cut + 1], line[cut + 1 :]
            yield line
    if carry:
        yield carry


# --- HTML -------------------------------------------------------------------------------------

_HTML_DROP = ("script", "style", "noscript", "template", "svg", "iframe", "object")
_HTML_BLOCKS = (
    "address", "article", "aside", "blockquote", "dd", "div", "dl", "dt", "fieldset", "figcaption",
    "figure", "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6", "header", "hr", "li", "main",
    "nav", "ol", "p", "pre", "section", "table", "title", "tr", "ul",
)


def _html_text(path: Path) -> str:
    from bs4 import BeautifulSoup

    data = path.read_bytes()
    if b"\x00" in data[:SNIFF_BYTES] and not data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise ExtractionError("unsupported_type", "binary content, not HTML")
    soup = BeautifulSoup(data, "html.parser")
    for tag in soup.find_all(_HTML_DROP):
        tag.decompose()
    # get_text("\n") would also break lines inside sentences at every <b> or <a>; breaking
    # only around block elements keeps sentences whole for the chunker.
    for tag in soup.find_all("br"):
        tag.replace_with("\n")
    for tag in soup.find_all(_HTML_BLOCKS):
        tag.insert_before("\n\n")
        tag.insert_after("\n\n")
    for tag in soup.find_all(("td", "th")):
        tag.insert_after(" | ")
    return soup.get_text()


# --- DOCX -------------------------------------------------------------------------------------

_ZIP_MAGIC = b"PK\x03\x04"
_OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"  # legacy .doc (and other Office 97 files)


def _docx_blocks(path: Path) -> Iterator[str]:
    document = _open_docx(path)
    from docx.table import Table

    for block in document.iter_inner_content():
        if isinstance(block, Table):
            yield _table_text(block)
        else:
            yield block.text


def _open_docx(path: Path) -> DocxDocument:
    with path.open("rb") as handle:
        head = handle.read(8)
    if head.startswith(_OLE_MAGIC):
        raise ExtractionError(
            "unsupported_type", "old Word .doc format renamed to .docx; save it as .docx and upload again"
        )
    if not head.startswith(_ZIP_MAGIC):
        raise ExtractionError("corrupt", "not a valid Word (.docx) file")
    import docx
    from docx.opc.exceptions import PackageNotFoundError

    try:
        return docx.Document(str(path))
    except (PackageNotFoundError, zipfile.BadZipFile, KeyError, ValueError) as exc:
        raise ExtractionError("corrupt", "damaged Word (.docx) file: cannot be opened") from exc
    except MemoryError:
        # A compressed document that inflates past the extraction worker's memory cap: the
        # worker (isolated_extraction) reports it with its limit, so it must not read as damage.
        raise
    except Exception as exc:  # noqa: BLE001 - lxml and zip errors vary; all mean "damaged"
        if _out_of_memory(exc):
            raise MemoryError("libxml2 could not allocate memory") from exc
        raise ExtractionError("corrupt", f"damaged Word (.docx) file: {exc.__class__.__name__}") from exc


def _out_of_memory(exc: Exception) -> bool:
    # libxml2 reports a refused allocation as a parse error (ERR_NO_MEMORY), not as MemoryError.
    from lxml import etree

    return isinstance(exc, etree.ParseError) and exc.code == etree.ErrorTypes.ERR_NO_MEMORY


def _table_text(table: Table) -> str:
    rows: list[str] = []
    for row in table.rows:
        cells: list[str] = []
        for cell in row.cells:
            text = cell.text.strip()
            # A merged cell is returned once per grid column it spans.
            if text and (not cells or cells[-1] != text):
                cells.append(text)
        if cells:
            rows.append(" | ".join(cells))
    return "\n".join(rows)


# --- PDF --------------------------------------------------------------------------------------

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

    pypdf logs on child loggers ("pypdf._reader", ...); a logger's filters do not apply to
    its children's records, but handlers do, so one handler on "pypdf" catches them all.
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
    # Set and reset around each pypdf call, never across a yield, so the caller's context
    # is never left pointing at this file's collector.
    token = _pdf_log_sink.set(sink)
    try:
        yield
    finally:
        _pdf_log_sink.reset(token)


def _pdf_pages(path: Path, max_pages: int, warnings: _WarningSink, filename: str) -> Iterator[PageText]:
    with path.open("rb") as handle:
        if b"%PDF-" not in handle.read(1024):
            raise ExtractionError("corrupt", "not a valid PDF file (no PDF header)")
        handle.seek(0)
        _install_pypdf_log_router()
        try:
            yield from _read_pdf(handle, max_pages, warnings)
        finally:
            if warnings.count:
                logger.info("pypdf reported %d warnings while reading %s", warnings.count, filename)


def _read_pdf(handle: IO[bytes], max_pages: int, warnings: _WarningSink) -> Iterator[PageText]:
    reader, page_count = _open_pdf(handle, warnings, max_pages)
    if page_count > max_pages:
        raise ExtractionError("too_large", f"too large: {page_count} pages (the limit is {max_pages})")
    characters = 0
    unreadable: list[str] = []
    for number in range(1, page_count + 1):
        text = _pdf_page_text(reader, number, warnings, unreadable)
        characters += _non_space_chars(text)
        # Blank pages are yielded too, so page numbers and counts match the document.
        yield PageText(page=number, text=text)
    if len(unreadable) == page_count:
        raise ExtractionError("corrupt", f"damaged PDF: no page could be read ({unreadable[0]})")
    if characters < max(MIN_PDF_CHARS, MIN_PDF_CHARS_PER_PAGE * page_count):
        raise ExtractionError("no_text", NO_TEXT_PDF_MESSAGE)


_NESTED_TOO_DEEPLY: Final = "its structure is nested too deeply to read"


def _beyond_reader_limits(exc: Exception, where: str = "") -> ExtractionError:
    # pypdf stops on its own safety limits (a stream inflating past 75 MB, a page tree of more
    # than 100,000 entries, huge arrays): the file is too big to read safely, not damaged.
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
        except Exception as exc:  # noqa: BLE001 - malformed files surface as any exception type
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
            # Walking a page tree of 100,000+ entries takes seconds; a file that says it is
            # far beyond the limit is refused on its word.
            declared = _declared_page_count(reader)
            if declared is not None and declared > max_pages:
                raise ExtractionError("too_large", f"too large: {declared} pages (the limit is {max_pages})")
            page_count = len(reader.pages)
        except (MemoryError, ExtractionError):
            raise
        except Exception as exc:  # noqa: BLE001 - any error here means the page list is unreadable
            # Reported at the first failure: pypdf remembers a half-read object and would call
            # the next attempt to read it a loop.
            raise _unreadable_page_list(exc) from exc
    if page_count == 0:
        raise ExtractionError("corrupt", "damaged PDF: it has no pages")
    return reader, page_count


def _pdf_page_text(reader: PdfReader, number: int, warnings: _WarningSink, unreadable: list[str]) -> str:
    """One page's normalised text; a page pypdf cannot parse counts as blank, not fatal."""
    from pypdf.errors import LimitReachedError

    with _collect_pypdf_logs(warnings):
        try:
            raw = reader.pages[number - 1].extract_text()
        except MemoryError:
            raise
        except LimitReachedError as exc:
            raise _beyond_reader_limits(exc, f"page {number} is ") from exc
        except Exception as exc:  # noqa: BLE001 - one broken page must not lose the others
            nested = isinstance(exc, RecursionError)
            reason = f"page {number}: " + (_NESTED_TOO_DEEPLY if nested else f"{exc.__class__.__name__}: {exc}")
            warnings.add(reason)
            unreadable.append(reason)
            return ""
    return normalize_whitespace(raw or "")
