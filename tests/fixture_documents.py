"""Generated test documents: real PDFs, DOCX and HTML written on the fly.

Tests must not depend on checked-in binaries, so every fixture file is made here from text the
test chooses. PDFs are written with reportlab (a different producer from the pypdf reader under
test), so extraction is exercised on an independent implementation of the format.
"""

from __future__ import annotations

import random
from pathlib import Path

# Text that the HTML fixture hides in <script> and <style>; extraction must drop it.
HTML_SCRIPT_MARKER = "trackingPixelLoaded"
HTML_STYLE_MARKER = "font-family-fixture"

_PAGE_WIDTH = 595.0  # A4 points
_MIN_PAGE_HEIGHT = 842.0
_MARGIN = 56.0
_FONT = "Helvetica"
_FONT_SIZE = 11.0
_LEADING = 14.0


def make_pdf(path: Path, pages: list[str]) -> Path:
    """A text PDF with exactly one page per entry of `pages`.

    Paragraphs are separated by blank lines; long lines are wrapped to the page width so every
    word lands on the page (and is extractable). A page whose text does not fit an A4 sheet is
    made taller instead of spilling onto an extra page, so page numbers stay predictable.
    """
    from reportlab.lib.utils import simpleSplit
    from reportlab.pdfgen import canvas

    path = Path(path)
    text_width = _PAGE_WIDTH - 2 * _MARGIN
    pdf = canvas.Canvas(str(path), pageCompression=1)
    pdf.setTitle(path.stem)
    for page_text in pages:
        lines: list[str] = []
        for paragraph in page_text.split("\n"):
            # An empty paragraph line is a blank line in the source: keep it as vertical space.
            lines.extend(simpleSplit(paragraph, _FONT, _FONT_SIZE, text_width) or [""])
        height = max(_MIN_PAGE_HEIGHT, 2 * _MARGIN + _LEADING * len(lines))
        pdf.setPageSize((_PAGE_WIDTH, height))
        text = pdf.beginText(_MARGIN, height - _MARGIN)
        text.setFont(_FONT, _FONT_SIZE)
        text.setLeading(_LEADING)
        for line in lines:
            text.textLine(line)
        pdf.drawText(text)
        pdf.showPage()
    pdf.save()
    return path


def make_encrypted_pdf(path: Path, password: str = "secret", pages: list[str] | None = None) -> Path:
    """A text PDF that opens only with `password` (AES-256 user password)."""
    from pypdf import PdfReader, PdfWriter

    path = Path(path)
    plain = path.with_name(path.name + ".plain.pdf")
    make_pdf(plain, pages or ["This confidential page can only be read with the password."])
    writer = PdfWriter(clone_from=PdfReader(plain))
    writer.encrypt(user_password=password, owner_password=password + "-owner", algorithm="AES-256")
    with path.open("wb") as handle:
        writer.write(handle)
    plain.unlink()
    return path


def make_image_only_pdf(path: Path, pages: int = 2) -> Path:
    """A PDF like a scan: shapes and a raster image on each page, no text objects at all."""
    from PIL import Image, ImageDraw
    from reportlab.lib.utils import ImageReader
    from reportlab.pdfgen import canvas

    path = Path(path)
    picture = Image.new("RGB", (120, 80), "white")
    ImageDraw.Draw(picture).ellipse((10, 10, 110, 70), fill="navy")
    pdf = canvas.Canvas(str(path))
    for index in range(pages):
        pdf.setFillColorRGB(0.8, 0.2 + 0.1 * index, 0.2)
        pdf.rect(100, 500, 300, 150, fill=1)
        pdf.circle(300, 300, 80, fill=0)
        pdf.drawImage(ImageReader(picture), 100, 100, width=240, height=160)
        pdf.showPage()
    pdf.save()
    return path


def make_corrupt_pdf(path: Path) -> Path:
    """Starts like a PDF, then garbage: no objects, no cross-reference table, no trailer."""
    path = Path(path)
    noise = random.Random(7).randbytes(4096).replace(b"obj", b"xxx").replace(b"xref", b"xxxx")
    path.write_bytes(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n" + noise + b"\n%%EOF\n")
    return path


def make_docx(path: Path, paragraphs: list[str], table: list[list[str]] | None = None) -> Path:
    """A Word document with a heading, the paragraphs, and optionally a table after them."""
    import docx

    path = Path(path)
    document = docx.Document()
    document.add_heading(path.stem.replace("_", " ").title(), level=1)
    for paragraph in paragraphs:
        document.add_paragraph(paragraph)
    if table:
        grid = document.add_table(rows=len(table), cols=max(len(row) for row in table))
        for row, values in zip(grid.rows, table, strict=True):
            for cell, value in zip(row.cells, values, strict=False):
                cell.text = value
    document.save(str(path))
    return path


def make_html(path: Path, title: str, paragraphs: list[str]) -> Path:
    """An HTML page with script, style and inline markup around the paragraphs."""
    from html import escape

    path = Path(path)
    body = "\n".join(f"    <p>{_emphasise_first_word(escape(p))}</p>" for p in paragraphs)
    path.write_text(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n"
        "  <meta charset=\"utf-8\">\n"
        f"  <title>{escape(title)}</title>\n"
        f"  <style>body {{ {HTML_STYLE_MARKER}: serif; }}</style>\n"
        f"  <script>window.{HTML_SCRIPT_MARKER} = true;</script>\n"
        "</head>\n<body>\n"
        f"  <h1>{escape(title)}</h1>\n"
        f"  <div class=\"content\">\n{body}\n  </div>\n"
        f"  <script>console.log('{HTML_SCRIPT_MARKER}');</script>\n"
        "</body>\n</html>\n",
        encoding="utf-8",
    )
    return path


def _emphasise_first_word(paragraph: str) -> str:
    # Inline markup mid-sentence: extraction must not break the sentence apart around it.
    first, _, rest = paragraph.partition(" ")
    return f"<b>{first}</b> {rest}" if rest else paragraph


_NAMES = [
    "Ada", "Bruno", "Chiara", "Dmitri", "Elena", "Farid", "Greta", "Hiroshi", "Ingrid", "Jonas",
    "Kalinda", "Lorenzo", "Mireille", "Nikolai", "Odette", "Pavel", "Quentin", "Rosalind", "Soren",
    "Tamsin", "Ulrich", "Valentina", "Wendell", "Ximena", "Yusuf", "Zofia",
]
_PLACES = [
    "Lisbon", "the northern valley", "Kyoto", "the harbour district", "Reykjavik", "the old mill",
    "Marrakesh", "the river delta", "Tallinn", "the mountain observatory", "Cork", "the salt flats",
    "Valparaiso", "the botanical garden", "Ljubljana", "the coastal archive",
]
_SUBJECTS = [
    "copper kettles", "migrating cranes", "tidal clocks", "wool dyes", "glacier ice", "beekeeping ledgers",
    "railway timetables", "sourdough cultures", "lighthouse lenses", "violin varnish", "cartography inks",
    "orchard grafts", "weather balloons", "ferry routes", "stained glass", "moss gardens",
]
_VERBS = [
    "catalogued", "repaired", "measured", "studied", "photographed", "restored", "documented",
    "compared", "mapped", "recorded", "sketched", "tested",
]
_QUALITIES = [
    "remarkably durable", "unusually fragile", "surprisingly warm", "oddly symmetrical",
    "faintly luminous", "stubbornly inaccurate", "quietly elegant", "astonishingly precise",
]
_CONNECTIVES = ["Later", "Meanwhile", "Afterwards", "In the spring", "By the autumn", "Eventually"]


def _sentence(rng: random.Random) -> str:
    name, place, subject = rng.choice(_NAMES), rng.choice(_PLACES), rng.choice(_SUBJECTS)
    year, count = rng.randint(1850, 2020), rng.randint(3, 987)
    template = rng.randrange(5)
    if template == 0:
        return f"In {year}, {name} {rng.choice(_VERBS)} {count} {subject} in {place}."
    if template == 1:
        quality = rng.choice(_QUALITIES)
        return f"The {subject} of {place} were {quality}, according to {name}'s notes from {year}."
    if template == 2:
        return (
            f"{rng.choice(_CONNECTIVES)}, {name} {rng.choice(_VERBS)} the {subject} again "
            f"and counted {count} of them near {place}."
        )
    if template == 3:
        return f"Nobody in {place} had {rng.choice(_VERBS)} {subject} before {name} arrived in {year}."
    return f"{name} wrote that {count} {subject} from {place} looked {rng.choice(_QUALITIES)}."


def sample_paragraphs(n: int, seed: int = 0) -> list[str]:
    """`n` paragraphs of deterministic English-like prose, 3-6 sentences each.

    Every sentence is distinct within the call (names, places, years and counts vary), so a
    retrieval test can look for one specific fact and expect exactly one source for it.
    """
    rng = random.Random(seed)
    seen: set[str] = set()
    paragraphs: list[str] = []
    for _ in range(n):
        sentences: list[str] = []
        target = rng.randint(3, 6)
        while len(sentences) < target:
            sentence = _sentence(rng)
            if sentence not in seen:
                seen.add(sentence)
                sentences.append(sentence)
        paragraphs.append(" ".join(sentences))
    return paragraphs

