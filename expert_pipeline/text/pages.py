"""What every format's extraction produces: pages of normalised text, or an ExtractionError."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Literal

ExtractionErrorKind = Literal["encrypted", "corrupt", "no_text", "empty", "unsupported_type", "too_large"]


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
        # Default pickling passes only the message to __init__; the kind must survive the worker process.
        return (type(self), (self.kind, str(self)))


# Controls other than tab and newline are encoding or extraction debris; NUL breaks PostgreSQL text.
_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f\u200b\ufeff]")
_HORIZONTAL_SPACE = re.compile(r"[^\S\n]+")
_MANY_NEWLINES = re.compile(r"\n{3,}")


def normalize_whitespace(text: str) -> str:
    """NFKC (ligatures as plain letters), one space between words, at most one blank line, no NULs."""
    text = unicodedata.normalize("NFKC", text)
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\f", "\n\n")
    text = _CONTROL_CHARS.sub("", text)
    text = _HORIZONTAL_SPACE.sub(" ", text)
    text = "\n".join(line.strip() for line in text.split("\n"))
    return _MANY_NEWLINES.sub("\n\n", text).strip()


def non_space_chars(text: str) -> int:
    return len(text) - sum(1 for c in text if c.isspace())
