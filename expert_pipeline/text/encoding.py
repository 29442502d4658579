"""Which codec reads a text file: strict UTF-8 first, charset-normalizer for everything else.

The whole file is scanned (in blocks) before the first page is read, because a file that turns
out to be binary halfway would otherwise fail after half its pages were already yielded.
"""

from __future__ import annotations

import codecs
from pathlib import Path
from typing import Final

from expert_pipeline.text.pages import ExtractionError

# Enough bytes to recognise a format or binary content without reading a whole file.
SNIFF_BYTES: Final = 64 * 1024

_WIDE_BOMS: Final = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)  # UTF-32's BOMs start with these
_CONTROL_BYTES: Final = bytes(b for b in range(32) if b not in b"\t\n\r\f")


def text_encoding(path: Path) -> str:
    """A codec name for `open()`; ExtractionError("unsupported_type") for binary content."""
    with path.open("rb") as handle:
        head = handle.read(SNIFF_BYTES)
        if b"\x00" in head or head.startswith(_WIDE_BOMS):
            return _wide_unicode(head)
        if looks_binary(head):
            raise _binary()
        handle.seek(0)
        decoder = codecs.getincrementaldecoder("utf-8")()
        legacy: bytes | None = None
        while block := handle.read(SNIFF_BYTES):
            if b"\x00" in block:
                raise _binary()
            if legacy is None:
                try:
                    decoder.decode(block)
                except UnicodeDecodeError:
                    legacy = block  # where the file stops being UTF-8 is where its code page shows
    # Strict UTF-8 first: charset-normalizer samples a few blocks, and UTF-8 is unambiguous.
    return "utf-8-sig" if legacy is None else _legacy_encoding(legacy)


def looks_binary(sample: bytes) -> bool:
    """NUL bytes, or control bytes common enough that no 8-bit code page would make text of them."""
    # Not charset_normalizer.is_binary: it also refuses real legacy text it cannot place (cp1254 Turkish).
    if b"\x00" in sample:
        return True
    control = len(sample) - len(sample.translate(None, _CONTROL_BYTES))
    return bool(sample) and control / len(sample) > 0.05


def _wide_unicode(head: bytes) -> str:
    """UTF-16 or UTF-32 (with or without a BOM), whose NUL bytes are text; anything else is binary."""
    from charset_normalizer import from_bytes

    guess = from_bytes(head).best()
    if guess is None or not guess.encoding.startswith(("utf_16", "utf_32")):
        raise _binary()
    return guess.encoding


def _legacy_encoding(sample: bytes) -> str:
    from charset_normalizer import from_bytes

    guess = from_bytes(sample).best()
    western = from_bytes(sample, cp_isolation=["cp1252"]).best()
    # charset-normalizer breaks ties on short Western text toward cp1250 or CJK ("Crème" as "Crčme").
    if guess is None or (western is not None and western.chaos <= guess.chaos):
        return "cp1252"
    return guess.encoding


def _binary() -> ExtractionError:
    return ExtractionError("unsupported_type", "binary content, not text")
