"""Non-paged formats (text, Markdown, HTML, DOCX) cut into numbered sections that stand in for pages."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Final

from expert_pipeline.text.pages import ExtractionError, PageText, normalize_whitespace

# Small enough that huge files stream and a cited "page" still narrows the place down.
SECTION_CHARS: Final = 10_000


def sections(pieces: Iterable[str], joiner: str) -> Iterator[PageText]:
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


def limit_pages(pages: Iterator[PageText], max_pages: int) -> Iterator[PageText]:
    for page in pages:
        if page.page > max_pages:
            raise ExtractionError("too_large", f"too large: more than {max_pages} pages of text")
        yield page
