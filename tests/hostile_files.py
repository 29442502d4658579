"""Hostile documents, built byte by byte: each is small on disk and bad for a parser."""

from __future__ import annotations

import io
import random
import zipfile
import zlib
from pathlib import Path

FONT = b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"


def raw_pdf(objects: list[bytes]) -> bytes:
    """A PDF with the given objects (1 is the catalog) and a correct cross-reference table."""
    out = bytearray(b"%PDF-1.7\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def _stream(data: bytes, compress: bool = True) -> bytes:
    body = zlib.compress(data, 9) if compress else data
    flate = b" /Filter /FlateDecode" if compress else b""
    return b"<< /Length %d%s >>\nstream\n" % (len(body), flate) + body + b"\nendstream"


def _one_page(content: bytes, resources: bytes = b"<< /Font << /F1 5 0 R >> >>", count: bytes = b"1") -> list[bytes]:
    return [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count " + count + b" >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R /Resources " + resources + b" >>",
        content,
        FONT,
    ]


TEXT = b"BT /F1 12 Tf 72 720 Td (A page with enough words to count as a real document.) Tj ET"


def huge_page_count_pdf(path: Path, fan_out: int = 400) -> Path:
    """160,000 pages in 6 KB: a two-level page tree whose every node is the same object."""
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [" + b"3 0 R " * fan_out + b"] /Count %d >>" % (fan_out * fan_out),
        b"<< /Type /Pages /Parent 2 0 R /Kids [" + b"4 0 R " * fan_out + b"] /Count %d >>" % fan_out,
        b"<< /Type /Page /Parent 3 0 R /MediaBox [0 0 612 792] /Contents 5 0 R"
        b" /Resources << /Font << /F1 6 0 R >> >> >>",
        _stream(TEXT),
        FONT,
    ]
    path.write_bytes(raw_pdf(objects))
    return path


def understated_page_count_pdf(path: Path, pages: int = 150_000) -> Path:
    """150,000 entries in the page list while /Count claims one page: only reading the list tells."""
    objects = _one_page(_stream(TEXT))
    objects[1] = b"<< /Type /Pages /Kids [" + b"3 0 R " * pages + b"] /Count 1 >>"
    path.write_bytes(raw_pdf(objects))
    return path


def deeply_nested_pdf(path: Path, depth: int = 100_000) -> Path:
    """A content stream whose text operand is nested a hundred thousand arrays deep."""
    content = TEXT + b"\nBT " + b"[" * depth + b"(x)" + b"]" * depth + b" TJ ET"
    path.write_bytes(raw_pdf(_one_page(_stream(content))))
    return path


def deeply_nested_catalog_pdf(path: Path, depth: int = 50_000) -> Path:
    """The document catalog itself holds arrays fifty thousand deep: reading it recurses."""
    objects = _one_page(_stream(TEXT))
    objects[0] = b"<< /Type /Catalog /Pages 2 0 R /Junk " + b"[" * depth + b"]" * depth + b" >>"
    path.write_bytes(raw_pdf(objects))
    return path


def flate_bomb_pdf(path: Path, megabytes: int = 200) -> Path:
    """A 200 KB file whose content stream inflates to 200 MB (of spaces after one line of text)."""
    compressor = zlib.compressobj(6)
    parts = [compressor.compress(TEXT + b"\n")]
    block = b" " * (1024 * 1024)
    parts += [compressor.compress(block) for _ in range(megabytes)]  # streamed: never 200 MB here
    parts.append(compressor.flush())
    body = b"".join(parts)
    content = b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(body) + body + b"\nendstream"
    path.write_bytes(raw_pdf(_one_page(content)))
    return path


def self_drawing_pdf(path: Path) -> Path:
    """A form XObject that draws itself: a parser that follows it never comes back."""
    objects = _one_page(_stream(TEXT + b"\n/X1 Do"), resources=b"<< /Font << /F1 5 0 R >> /XObject << /X1 6 0 R >> >>")
    objects.append(
        b"<< /Type /XObject /Subtype /Form /BBox [0 0 612 792] /Resources << /XObject << /X1 6 0 R >> >> /Length 6 >>"
        b"\nstream\n/X1 Do\nendstream"
    )
    path.write_bytes(raw_pdf(objects))
    return path


def slow_pdf(path: Path, pages: int = 4_000, operators: int = 20_000) -> Path:
    """25 KB: 4,000 pages (under the page limit) that all share one content stream of 20,000
    drawing operators. Each page costs about a second to parse here, over an hour in all, and
    no single stream comes near the parser's own work limits."""
    objects = _one_page(_stream(TEXT + b"\n" + b"1 0 0 1 0 0 cm\n" * operators))
    objects[1] = b"<< /Type /Pages /Kids [" + b"3 0 R " * pages + b"] /Count %d >>" % pages
    path.write_bytes(raw_pdf(objects))
    return path


def renamed_binary(path: Path) -> Path:
    """A PNG image given a document's name."""
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 64)
    return path


def renamed_program(path: Path) -> Path:
    """An ELF executable's header and bytes given a document's name."""
    path.write_bytes(b"\x7fELF\x02\x01\x01\x00" + random.Random(1).randbytes(16 * 1024))
    return path


def random_bytes(path: Path, size: int = 64 * 1024) -> Path:
    """Noise (the same noise on every run) given a document's name."""
    path.write_bytes(random.Random(2).randbytes(size))
    return path


def docx_bomb(path: Path, paragraphs: int = 3_000_000) -> Path:
    """A Word file of ~100 KB whose document.xml inflates to ~150 MB of tiny paragraphs."""
    ns = 'xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"'
    body = b"<w:p><w:r><w:t>x</w:t></w:r></w:p>" * paragraphs
    document = b'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n<w:document ' + ns.encode() + b"><w:body>" + body + b"</w:body></w:document>"
    content_types = (
        b'<?xml version="1.0" encoding="UTF-8"?><Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
        b'<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
        b'<Default Extension="xml" ContentType="application/xml"/>'
        b'<Override PartName="/word/document.xml" ContentType="application/vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml"/>'
        b"</Types>"
    )
    rels = (
        b'<?xml version="1.0" encoding="UTF-8"?><Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
        b'<Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument" Target="word/document.xml"/>'
        b"</Relationships>"
    )
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        archive.writestr("[Content_Types].xml", content_types)
        archive.writestr("_rels/.rels", rels)
        archive.writestr("word/document.xml", document)
    path.write_bytes(buffer.getvalue())
    return path
