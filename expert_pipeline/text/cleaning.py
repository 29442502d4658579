"""Text cleaning between a parser's raw output and the chunker: what makes extracted text match queries.

- NFKC: typographic ligatures (ﬁ, ﬀ) and compatibility forms become plain letters, so "Definition"
  found in a PDF full of ligatures matches a query typed with ordinary letters.
- Words hyphenated at a line end are joined ("infor-\\nmation" -> "information"); a hyphen before a
  capital, a digit or a conjunction ("Max-\\nPlanck", "Haus- und Hofnarr") stays.
- Two-column pages (pypdf's layout text, where columns sit side by side on each line) are read
  column by column, split at a gutter of blank characters running down the page.
- Lines repeating at the top or bottom of most pages (running headers, footers) and bare page
  numbers there are dropped.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Final

from expert_pipeline.text.pages import PageText

# --- characters and line ends -----------------------------------------------------------------

# A hyphen (ASCII, soft, or the Unicode hyphen) at a line end after a letter, then the next word.
_LINE_END_HYPHEN = re.compile(r"(?<=[^\W\d_])[-\u00ad\u2010][^\S\n]*\n[^\S\n]*(?=(\w+))")
# After such a hyphen these words mean an elided compound ("Vor- und Nachteile"), not a split word.
_CONJUNCTIONS: Final = frozenset({"und", "oder", "bzw", "sowie", "and", "or", "nor", "to"})


def nfkc(text: str) -> str:
    return unicodedata.normalize("NFKC", text)


def join_hyphenated(text: str) -> str:
    """Join words split by a hyphen at a line end; keep the hyphen where it belongs to the text."""

    def repl(match: re.Match[str]) -> str:
        hyphen = match.group(0)[0]
        following = match.group(1)
        if following.lower() in _CONJUNCTIONS:
            return "- "
        if hyphen == "\u00ad" or following[0].islower():
            return ""  # a split word
        return "-"  # a real compound: "Max-Planck", "COVID-19"

    return _LINE_END_HYPHEN.sub(repl, text)


# --- columns ----------------------------------------------------------------------------------

# A gutter is at least this many blank characters wide in pypdf's layout text...
_GUTTER_WIDTH: Final = 3
# ...and blank on this share of the page's text lines, with text on both sides of it on most.
_GUTTER_SHARE: Final = 0.9
_MIN_COLUMN_LINES: Final = 6
_MIN_COLUMN_CHARS: Final = 20


def split_columns(layout_text: str) -> str:
    """Layout text (columns side by side, spacing kept) read column by column, left first.

    A page without a gutter (one column, or a table whose gaps wander) is returned unchanged,
    so table rows stay rows.
    """
    lines = layout_text.split("\n")
    texted = [line for line in lines if line.strip()]
    if len(texted) < _MIN_COLUMN_LINES:
        return layout_text
    gutter = _find_gutter(texted)
    if gutter is None:
        return layout_text
    start, end = gutter
    left = [line[:start].rstrip() for line in lines]
    right = [line[end:].strip() if len(line) > end else "" for line in lines]
    # A full-width line (a title above both columns) belongs before both.
    return "\n".join(left).rstrip() + "\n\n" + split_columns("\n".join(right)).strip()


def _find_gutter(lines: list[str]) -> tuple[int, int] | None:
    width = max(len(line) for line in lines)
    blank = [0] * width
    for line in lines:
        padded = line.ljust(width)
        for i, char in enumerate(padded):
            if char == " ":
                blank[i] += 1
    needed = _GUTTER_SHARE * len(lines)
    best: tuple[int, int] | None = None
    run_start: int | None = None
    # Only the middle of the page: margins and indents are blank on every line too.
    low, high = width // 4, width * 3 // 4
    for i in range(low, high + 1):
        is_blank = i < high and blank[i] >= needed
        if is_blank and run_start is None:
            run_start = i
        elif not is_blank and run_start is not None:
            if i - run_start >= _GUTTER_WIDTH and (best is None or i - run_start > best[1] - best[0]):
                best = (run_start, i)
            run_start = None
    if best is None:
        return None
    start, end = best
    sides = [(line[:start].strip(), line[end:].strip()) for line in lines]
    both = [(left, right) for left, right in sides if left and right]
    if len(both) < 0.5 * len(lines):
        return None
    # Columns of prose are wide on both sides; a table's cells are short, and its rows stay rows.
    left_width = sum(len(left) for left, _ in both) / len(both)
    right_width = sum(len(right) for _, right in both) / len(both)
    return best if min(left_width, right_width) >= _MIN_COLUMN_CHARS else None


# --- running headers and footers --------------------------------------------------------------

# Lines at the top or bottom of a page inspected as possible headers and footers.
_MARGIN_LINES: Final = 2
# A margin line repeating on at least this share of the pages (and on 3 or more) is a header.
_REPEAT_SHARE: Final = 0.5
# Pages read before deciding; later pages are cleaned with what these taught.
_LEARN_PAGES: Final = 50
_PAGE_NUMBER = re.compile(
    r"^[-–—\s]*(?:(?:page|seite|p\.|s\.)\s*)?(?:\d{1,5}|[ivx]{1,5})(?:\s*(?:/|of|von)\s*\d{1,5})?[-–—\s]*$",
    re.IGNORECASE,
)
_DIGITS = re.compile(r"\d+")


def drop_repeated_margins(pages: Iterable[PageText]) -> Iterator[PageText]:
    """Pages without running headers, footers and bare page numbers.

    The first pages are held back until the repeating lines are known; after that pages stream.
    """
    iterator = iter(pages)
    held: list[PageText] = []
    for page in iterator:
        held.append(page)
        if len(held) >= _LEARN_PAGES:
            break
    repeated = _repeated_margin_lines(held)
    for page in held:
        yield _without_margins(page, repeated)
    for page in iterator:
        yield _without_margins(page, repeated)


def _margin_key(line: str) -> str:
    # Page numbers inside a header ("Chapter 2 — 17") differ per page; the rest repeats.
    return _DIGITS.sub("#", line.strip().lower())


def _margins(lines: list[str]) -> list[str]:
    texted = [line for line in lines if line.strip()]
    return texted[:_MARGIN_LINES] + texted[-_MARGIN_LINES:]


def _repeated_margin_lines(pages: list[PageText]) -> frozenset[str]:
    counts: Counter[str] = Counter()
    with_text = 0
    for page in pages:
        lines = page.text.split("\n")
        if not any(line.strip() for line in lines):
            continue
        with_text += 1
        counts.update({_margin_key(line) for line in _margins(lines)})
    needed = max(3, _REPEAT_SHARE * with_text)
    return frozenset(key for key, count in counts.items() if count >= needed)


def _without_margins(page: PageText, repeated: frozenset[str]) -> PageText:
    lines = page.text.split("\n")
    texted = [i for i, line in enumerate(lines) if line.strip()]
    margin = set(texted[:_MARGIN_LINES] + texted[-_MARGIN_LINES:])
    kept = [
        line
        for i, line in enumerate(lines)
        if i not in margin or not (_margin_key(line) in repeated or _PAGE_NUMBER.match(line.strip()))
    ]
    text = "\n".join(kept).strip()
    return page if text == page.text else PageText(page=page.page, text=text)
