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
    with path.open("r", encoding=encoding, errors="replace", newline="") as handle:
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
