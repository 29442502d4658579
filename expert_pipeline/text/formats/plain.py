"""Plain text and Markdown: decoded by `text_encoding`, streamed line by line into sections."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from expert_pipeline.text.encoding import text_encoding
from expert_pipeline.text.pages import PageText
from expert_pipeline.text.sections import SECTION_CHARS, limit_pages, sections


def text_pages(path: Path, max_pages: int) -> Iterator[PageText]:
    return limit_pages(sections(_text_lines(path), ""), max_pages)


def _text_lines(path: Path) -> Iterator[str]:
    encoding = text_encoding(path)
    carry = ""
    # A guessed code page may leave a stray undefined byte: one U+FFFD beats failing after pages were yielded.
    with path.open("r", encoding=encoding, errors="replace", newline="") as handle:
        # Bounded, so a file without line breaks never becomes one string; a cut word is carried over.
        while line := handle.readline(SECTION_CHARS):
            line, carry = carry + line, ""
            if not line.endswith(("\n", "\r")):
                cut = max(line.rfind(" "), line.rfind("\t"))
                if cut > 0:
                    line, carry = line[: cut + 1], line[cut + 1 :]
            yield line
    if carry:
        yield carry
