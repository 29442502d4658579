"""Extracted text is cleaned so that it matches what people type: ligatures, hyphens, headers, columns."""

from __future__ import annotations

from pathlib import Path

from expert_pipeline.chat.extractive import source_of
from expert_pipeline.text.chunking import chunk_pages
from expert_pipeline.text.cleaning import join_hyphenated
from expert_pipeline.text.extraction import PageText, extract_pages
from status_api.schemas import ChatSource, SearchResult

_DEJAVU = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")

LEFT = [
    "Alpha column opens with the first line here",
    "and the left column continues on its own,",
    "telling one story from its top to its end",
    "without any help from the right side text",
    "so that a reader follows it line by line",
    "until the left column finishes right here.",
]
RIGHT = [
    "Beta column is a second story entirely and",
    "it must only be read after the left column",
    "has been read from its beginning to its end",
    "because a reader reads a page column-wise",
    "and never jumps across the gutter each line",
    "until the right column finishes right here.",
]


def _canvas_pdf(path: Path, pages: list[list[tuple[float, float, str]]], font: str = "Helvetica") -> Path:
    """A PDF with each string drawn at (x, y), in the order given (the content stream order)."""
    from reportlab.pdfbase import pdfmetrics
    from reportlab.pdfbase.ttfonts import TTFont
    from reportlab.pdfgen import canvas

    if font == "DejaVu":
        pdfmetrics.registerFont(TTFont("DejaVu", str(_DEJAVU)))
    pdf = canvas.Canvas(str(path), pagesize=(595, 842))
    for strings in pages:
        pdf.setFont(font, 10)
        for x, y, text in strings:
            pdf.drawString(x, y, text)
        pdf.showPage()
    pdf.save()
    return path


def _text(path: Path) -> str:
    return "\n".join(page.text for page in extract_pages(path))


def test_ligatures_become_plain_letters(tmp_path: Path) -> None:
    source = tmp_path / "thesis.txt"
    source.write_text("Die De\ufb01nition ist o\ufb00en, and the \ufb02oor is \ufb01ne.", encoding="utf-8")

    text = _text(source)

    assert "Definition" in text and "offen" in text and "floor is fine" in text
    assert not any(0xFB00 <= ord(c) <= 0xFB06 for c in text)


def test_ligatures_in_a_pdf_become_plain_letters(tmp_path: Path) -> None:
    pdf = _canvas_pdf(
        tmp_path / "ligatures.pdf",
        [[(56, 780, "The de\ufb01nition of an e\ufb00ective \ufb02ow is given here in full.")]],
        font="DejaVu",
    )

    assert "definition of an effective flow" in _text(pdf)


def test_a_word_hyphenated_at_a_line_end_is_joined(tmp_path: Path) -> None:
    lines = [
        "This page holds useful infor-",
        "mation about the Max-",
        "Planck institute and its Vor-",
        "und Nachteile for every reader.",
    ]
    pdf = _canvas_pdf(tmp_path / "hyphens.pdf", [[(56, 780 - 14 * i, line) for i, line in enumerate(lines)]])

    text = " ".join(_text(pdf).split())

    assert "useful information about" in text
    assert "Max-Planck institute" in text  # a capital after the hyphen: a real compound
    assert "Vor- und Nachteile" in text  # an elided compound keeps its hyphen


def test_join_hyphenated_keeps_ordinary_hyphens() -> None:
    assert join_hyphenated("a well-known fact\nand more") == "a well-known fact\nand more"
    assert join_hyphenated("Ver-\nsicherung") == "Versicherung"


def test_running_headers_footers_and_page_numbers_are_dropped(tmp_path: Path) -> None:
    bodies = [
        "Chapter text about rivers and their long winding banks.",
        "Mountains rise above the valley where the river starts.",
        "Forests cover the hills on both sides of the valley floor.",
        "The sea receives the river after its journey through plains.",
    ]
    pages = [
        [
            (56, 800, "ACME Annual Report 2025 - Confidential"),
            (56, 700, body),
            (56, 686, "A second line of ordinary body text follows here."),
            (290, 40, str(number)),
        ]
        for number, body in enumerate(bodies, start=1)
    ]
    pdf = _canvas_pdf(tmp_path / "report.pdf", pages)

    extracted = list(extract_pages(pdf))

    assert [p.page for p in extracted] == [1, 2, 3, 4]
    for page, body in zip(extracted, bodies, strict=True):
        assert "ACME Annual Report" not in page.text
        assert body in " ".join(page.text.split())
        assert page.text.split("\n")[-1].strip() != str(page.page)


def test_a_two_column_page_reads_column_by_column(tmp_path: Path) -> None:
    # Drawn row by row across both columns, as some producers do: stream order interleaves them.
    strings = []
    for i, (left, right) in enumerate(zip(LEFT, RIGHT, strict=True)):
        strings += [(40, 780 - 14 * i, left), (310, 780 - 14 * i, right)]
    pdf = _canvas_pdf(tmp_path / "columns.pdf", [strings])

    text = " ".join(_text(pdf).split())

    assert " ".join(LEFT) in text and " ".join(RIGHT) in text
    assert text.index(LEFT[-1]) < text.index(RIGHT[0])


def test_table_rows_stay_rows(tmp_path: Path) -> None:
    rows = [("Fruit", "Count", "Price"), ("Apples", "3", "1.20"), ("Pears", "7", "2.50")] * 3
    # Drawn column by column: only positions tell which cells form a row.
    strings = [(60 + 150 * col, 780 - 16 * r, row[col]) for col in range(3) for r, row in enumerate(rows)]
    pdf = _canvas_pdf(tmp_path / "table.pdf", [strings])

    lines = [" ".join(line.split()) for line in _text(pdf).split("\n")]

    assert "Apples 3 1.20" in lines and "Pears 7 2.50" in lines


def _words(text: str) -> int:
    return len(text.split())


def test_a_chunk_spanning_two_pages_keeps_the_range() -> None:
    pages = [
        PageText(page=4, text="The bridge was finished in spring."),
        PageText(page=5, text="It carries trains across the river."),
    ]

    chunks = list(chunk_pages(pages, "bridges.pdf", count_tokens=_words, max_tokens=100, overlap_tokens=0))

    assert [(c.page, c.page_end) for c in chunks] == [(4, 5)]


class _Match:
    def __init__(self, metadata: dict[str, object]) -> None:
        self.id = "x"
        self.score = 0.5
        self.metadata = metadata


def test_a_cited_source_shows_the_page_range() -> None:
    spanning = source_of(_Match({"filename": "bridges.pdf", "page": 4, "page_end": 5, "text": "t"}))
    single = source_of(_Match({"filename": "bridges.pdf", "page": 4, "page_end": 4, "text": "t"}))

    assert (spanning.page, spanning.page_end) == (4, 5)
    assert (single.page, single.page_end) == (4, None)
    # The API's source and search-result shapes carry the range, so clients can show it.
    assert ChatSource(**spanning.as_dict()).page_end == 5
    assert SearchResult(**spanning.as_dict()).page_end == 5
