"""HTML: visible text only (no scripts or styles), with paragraph breaks around block elements."""

from __future__ import annotations

import codecs
import re
from collections.abc import Iterator
from pathlib import Path

from expert_pipeline.text.encoding import SNIFF_BYTES
from expert_pipeline.text.pages import ExtractionError, PageText
from expert_pipeline.text.sections import limit_pages, sections

_DROP = ("script", "style", "noscript", "template", "svg", "iframe", "object")
_BLOCKS = (
    "address",
    "article",
    "aside",
    "blockquote",
    "dd",
    "div",
    "dl",
    "dt",
    "fieldset",
    "figcaption",
    "figure",
    "footer",
    "form",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "header",
    "hr",
    "li",
    "main",
    "nav",
    "ol",
    "p",
    "pre",
    "section",
    "table",
    "title",
    "tr",
    "ul",
)
_PARAGRAPH_BREAK = re.compile(r"\n[^\S\n]*\n")


def html_pages(path: Path, max_pages: int) -> Iterator[PageText]:
    return limit_pages(sections(_PARAGRAPH_BREAK.split(_html_text(path)), "\n\n"), max_pages)


def _html_text(path: Path) -> str:
    from bs4 import BeautifulSoup

    data = path.read_bytes()
    if b"\x00" in data[:SNIFF_BYTES] and not data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise ExtractionError("unsupported_type", "binary content, not HTML")
    soup = BeautifulSoup(data, "html.parser")
    for tag in soup.find_all(_DROP):
        tag.decompose()
    # get_text("\n") would break lines inside sentences at every <b> or <a>; block elements only.
    for tag in soup.find_all("br"):
        tag.replace_with("\n")
    for tag in soup.find_all(_BLOCKS):
        tag.insert_before("\n\n")
        tag.insert_after("\n\n")
    for tag in soup.find_all(("td", "th")):
        tag.insert_after(" | ")
    return soup.get_text()
