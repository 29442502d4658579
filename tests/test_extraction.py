"""Text extraction through `extract_pages`: every supported type, and every way a file can fail."""

from __future__ import annotations

import logging
import pickle
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from expert_pipeline.text.extraction import (
    SUPPORTED_EXTENSIONS,
    ExtractionError,
    PageText,
    extract_pages,
    normalize_whitespace,
)
from tests.conftest import SHARED_DIR
from tests.fixture_documents import (
    HTML_SCRIPT_MARKER,
    HTML_STYLE_MARKER,
    make_corrupt_pdf,
    make_docx,
    make_encrypted_pdf,
    make_html,
    make_image_only_pdf,
    make_pdf,
    sample_paragraphs,
)

CORPUS = SHARED_DIR / "corpus"


def _flat(text: str) -> str:
    # PDF extraction re-wraps lines; compare text with all whitespace runs as single spaces.
    return " ".join(text.split())


def _extract_error(path: Path, filename: str | None = None) -> ExtractionError:
    with pytest.raises(ExtractionError) as caught:
        list(extract_pages(path, filename))
    return caught.value


# --- supported types --------------------------------------------------------------------------


def test_pdf_yields_each_page_with_its_own_text(tmp_path: Path) -> None:
    page_texts = ["\n\n".join(sample_paragraphs(3, seed=seed)) for seed in range(3)]
    pdf = make_pdf(tmp_path / "handbook.pdf", page_texts)

    pages = list(extract_pages(pdf))

    assert [p.page for p in pages] == [1, 2, 3]
    for page, source in zip(pages, page_texts, strict=True):
        assert _flat(page.text) == _flat(source)


def test_pdf_blank_page_keeps_page_numbers_truthful(tmp_path: Path) -> None:
    text = "\n\n".join(sample_paragraphs(2, seed=5))
    pdf = make_pdf(tmp_path / "gap.pdf", [text, "", text])

    pages = list(extract_pages(pdf))

    assert [(p.page, bool(p.text)) for p in pages] == [(1, True), (2, False), (3, True)]


def test_pdf_encrypted_without_user_password_is_read(tmp_path: Path) -> None:
    # "Encrypted" PDFs that only restrict printing open with an empty password.
    pdf = make_encrypted_pdf(tmp_path / "restricted.pdf", password="", pages=sample_paragraphs(1, seed=2))

    pages = list(extract_pages(pdf))

    assert _flat(pages[0].text) == _flat(sample_paragraphs(1, seed=2)[0])


class _RootRecords(logging.Handler):
    """Stands in for the console handler an application installs on the root logger."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_pdf_parser_warnings_are_collected_not_logged(tmp_path: Path) -> None:
    pdf = make_pdf(tmp_path / "sloppy.pdf", sample_paragraphs(2, seed=8))
    # A wrong startxref offset is a classic producer bug pypdf repairs, with warnings.
    wrong_offset = re.sub(
        rb"startxref\s+(\d+)", lambda m: b"startxref %d" % (int(m[1]) + 7), pdf.read_bytes()
    )
    pdf.write_bytes(wrong_offset)
    collected: list[str] = []
    root, console = logging.getLogger(), _RootRecords()
    root.addHandler(console)
    old_level = root.level
    root.setLevel(logging.INFO)
    try:
        pages = list(extract_pages(pdf, warnings=collected))
    finally:
        root.removeHandler(console)
        root.setLevel(old_level)

    assert len(pages) == 2 and _flat(pages[1].text) == _flat(sample_paragraphs(2, seed=8)[1])
    assert any("startxref" in w for w in collected)
    # (pytest's own capture handlers sit on the pypdf logger itself, so they are not checked.)
    assert not [r for r in console.records if r.name.startswith("pypdf")]
    assert [r.getMessage() for r in console.records if r.name.startswith("expert_pipeline")] == [
        f"pypdf reported {len(collected)} warnings while reading sloppy.pdf"
    ]


def test_pypdf_logs_outside_extraction_still_reach_the_root_logger(tmp_path: Path) -> None:
    pdf = make_pdf(tmp_path / "plain.pdf", sample_paragraphs(1))
    list(extract_pages(pdf))  # installs the routing
    root, console = logging.getLogger(), _RootRecords()
    root.addHandler(console)
    try:
        logging.getLogger("pypdf._reader").warning("someone else's pypdf use")
    finally:
        root.removeHandler(console)

    assert [r.getMessage() for r in console.records] == ["someone else's pypdf use"]


def test_text_file_utf8_with_bom_and_whitespace_normalised(tmp_path: Path) -> None:
    source = tmp_path / "notes.txt"
    source.write_bytes("\ufeffCafé   au\tlait\x0b costs\r\n\r\n\r\n\r\nfour \u00a0 euros.\n".encode())

    pages = list(extract_pages(source))

    assert pages == [PageText(page=1, text="Café au lait costs\n\nfour euros.")]


def test_text_file_utf16_with_bom(tmp_path: Path) -> None:
    # Windows editors still save "Unicode" text as UTF-16, which is full of NUL bytes.
    source = tmp_path / "windows.txt"
    source.write_bytes("Größe: zwölf Meter.\r\n".encode("utf-16"))

    assert [p.text for p in extract_pages(source)] == ["Größe: zwölf Meter."]


def test_normalize_whitespace_strips_nul_and_keeps_paragraphs() -> None:
    raw = "  Tides\x00 rise\t\ttwice   a day.\n\n\n\n  Moon\u00a0pulls. \n"

    assert normalize_whitespace(raw) == "Tides rise twice a day.\n\nMoon pulls."


def test_text_file_latin1_fallback(tmp_path: Path) -> None:
    source = tmp_path / "legacy.txt"
    source.write_bytes("Crème brûlée in Gruyère.\n".encode("latin-1"))

    assert [p.text for p in extract_pages(source)] == ["Crème brûlée in Gruyère."]


def test_text_file_cp1252_with_curly_quotes_and_dashes(tmp_path: Path) -> None:
    # What Windows editors save as "ANSI": quotes and dashes in 0x80-0x9F, where latin-1 has controls.
    text = "“It’s a café,” she said – twice … for €5."
    source = tmp_path / "ansi.txt"
    source.write_bytes((text + "\r\n").encode("cp1252"))

    # Text is NFKC-normalised (so ligatures match queries), which spells the ellipsis as three dots.
    assert [p.text for p in extract_pages(source)] == [text.replace("…", "...")]


@pytest.mark.parametrize("word", ["Señor", "père", "Zürich", "Ca va? Ça va."])
def test_short_western_text_is_read_as_cp1252(word: str, tmp_path: Path) -> None:
    source = tmp_path / "short.txt"
    source.write_bytes(word.encode("cp1252"))

    assert [p.text for p in extract_pages(source)] == [word]


@pytest.mark.parametrize(
    ("text", "encoding"),
    [
        ("Привет, как дела? Это простой текст на русском языке.", "cp1251"),
        ("Zażółć gęślą jaźń. Wszystkie ludzkie istoty rodzą się wolne i równe.", "cp1250"),
    ],
)
def test_other_legacy_code_pages_are_detected(text: str, encoding: str, tmp_path: Path) -> None:
    source = tmp_path / f"{encoding}.txt"
    source.write_bytes(((text + " ") * 3).encode(encoding))

    assert [p.text for p in extract_pages(source)] == [" ".join([text] * 3)]


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be"])
def test_text_file_utf16_without_bom(encoding: str, tmp_path: Path) -> None:
    text = "Größe: zwölf Meter. The moon pulls the tides twice a day."
    source = tmp_path / "export.txt"
    source.write_bytes((text + "\r\n").encode(encoding))

    assert [p.text for p in extract_pages(source)] == [text]


def test_text_file_utf16_big_endian_with_bom(tmp_path: Path) -> None:
    source = tmp_path / "mac.txt"
    source.write_bytes(b"\xfe\xff" + "Größe: zwölf Meter.\n".encode("utf-16-be"))

    assert [p.text for p in extract_pages(source)] == ["Größe: zwölf Meter."]


def test_legacy_bytes_after_the_first_block_decide_the_whole_file(tmp_path: Path) -> None:
    # The encoding must be known before the first page is yielded, not when the bad byte is reached.
    ascii_part = "The moon pulls the tides. " * 4_000  # ~100 KB of plain ASCII first
    source = tmp_path / "late.txt"
    source.write_bytes((ascii_part + "Crème brûlée – “very” good.\n").encode("cp1252"))

    text = " ".join(p.text for p in extract_pages(source))

    assert text.endswith("Crème brûlée – “very” good.")
    assert text.split() == (ascii_part + "Crème brûlée – “very” good.").split()


def test_utf8_character_across_a_block_boundary_stays_utf8(tmp_path: Path) -> None:
    head = "a" * (64 * 1024 - 1)  # the two bytes of "é" straddle the first 64 KB block's end
    source = tmp_path / "boundary.txt"
    source.write_bytes((head + "été " + "café " * 10).encode("utf-8"))

    text = " ".join(p.text for p in extract_pages(source))

    assert "été" in text and text.endswith("café") and "Ã" not in text


def test_markdown_type_comes_from_the_filename_not_the_stored_path(tmp_path: Path) -> None:
    stored = tmp_path / "upload-7f3a"  # storage name without extension
    stored.write_text("# Tides\n\nThe moon pulls the tides.\n", encoding="utf-8")

    pages = list(extract_pages(stored, "tides.md"))

    assert pages == [PageText(page=1, text="# Tides\n\nThe moon pulls the tides.")]


def test_large_text_file_streams_in_sections_without_splitting_words(tmp_path: Path) -> None:
    paragraphs = sample_paragraphs(400, seed=1)
    # One paragraph per line, plus a 60,000-character line with no line break at all.
    long_line = " ".join(paragraphs[:120])
    source = tmp_path / "big.txt"
    source.write_text("\n".join(paragraphs) + "\n" + long_line + "\n", encoding="utf-8")

    pages = list(extract_pages(source))

    assert [p.page for p in pages] == list(range(1, len(pages) + 1))
    assert len(pages) > 5 and all(len(p.text) <= 21_000 for p in pages)
    assert " ".join(p.text for p in pages).split() == source.read_text(encoding="utf-8").split()


def test_html_drops_script_and_style_and_keeps_sentences_whole(tmp_path: Path) -> None:
    paragraphs = sample_paragraphs(3, seed=4)
    page = make_html(tmp_path / "page.html", "Harbour Notes", paragraphs)

    pages = list(extract_pages(page))
    text = "\n\n".join(p.text for p in pages)

    assert pages[0].page == 1 and text.startswith("Harbour Notes")
    assert HTML_SCRIPT_MARKER not in text and HTML_STYLE_MARKER not in text
    for paragraph in paragraphs:
        assert paragraph in text.split("\n\n")  # inline <b> did not break the paragraph


def test_docx_paragraphs_and_table_cells(tmp_path: Path) -> None:
    paragraphs = sample_paragraphs(3, seed=6)
    table = [["Site", "Count"], ["Cork", "42 kettles"]]
    document = make_docx(tmp_path / "report.docx", paragraphs, table=table)

    pages = list(extract_pages(document))
    blocks = "\n\n".join(p.text for p in pages).split("\n\n")

    assert pages[0].page == 1
    assert blocks[0] == "Report"  # the heading
    assert blocks[1:4] == paragraphs
    assert blocks[4] == "Site | Count\nCork | 42 kettles"


def test_supported_extensions() -> None:
    assert SUPPORTED_EXTENSIONS == {".pdf", ".txt", ".md", ".markdown", ".html", ".htm", ".docx"}


# --- files that cannot be indexed ---------------------------------------------------------


def _renamed_binary(tmp_path: Path) -> Path:
    path = tmp_path / "renamed.txt"
    path.write_bytes(bytes(range(256)) * 40)
    return path


def _control_bytes(tmp_path: Path) -> Path:
    path = tmp_path / "renamed.md"  # no NUL bytes, but far more control bytes than any text has
    path.write_bytes(bytes([1, 2, 3, 4, 5, 6, 7, 8, 0x41, 0x42]) * 400)
    return path


def _late_nul(tmp_path: Path) -> Path:
    path = tmp_path / "data.txt"  # text for the first 64 KB, then a binary tail
    path.write_bytes(b"plain words " * 8_000 + bytes(range(256)) * 4)
    return path


def _empty(tmp_path: Path) -> Path:
    path = tmp_path / "empty.txt"
    path.write_bytes(b"")
    return path


def _unsupported(tmp_path: Path) -> Path:
    path = tmp_path / "data.xyz"
    path.write_text("what is this")
    return path


def _fake_pdf(tmp_path: Path) -> Path:
    path = tmp_path / "letter.pdf"
    path.write_text("Dear customer, this is plain text with a .pdf name.")
    return path


def _fake_docx(tmp_path: Path) -> Path:
    path = tmp_path / "memo.docx"
    path.write_text("not a zip archive")
    return path


def _truncated_docx(tmp_path: Path) -> Path:
    path = make_docx(tmp_path / "cut.docx", sample_paragraphs(2))
    path.write_bytes(path.read_bytes()[:300])
    return path


def _whitespace_only(tmp_path: Path) -> Path:
    path = tmp_path / "blank.md"
    path.write_text("   \n\n\t\n")
    return path


FAILURES: dict[str, tuple[Callable[[Path], Path], str, str]] = {
    "encrypted": (lambda d: make_encrypted_pdf(d / "locked.pdf"), "encrypted", "password"),
    "corrupt pdf": (lambda d: make_corrupt_pdf(d / "broken.pdf"), "corrupt", "damaged PDF"),
    "not a pdf": (_fake_pdf, "corrupt", "not a valid PDF"),
    "image only": (lambda d: make_image_only_pdf(d / "scan.pdf"), "no_text", "no extractable text"),
    "empty": (_empty, "empty", "file is empty"),
    "unsupported": (_unsupported, "unsupported_type", ".xyz"),
    "renamed binary": (_renamed_binary, "unsupported_type", "binary content"),
    "control bytes": (_control_bytes, "unsupported_type", "binary content"),
    "binary after text": (_late_nul, "unsupported_type", "binary content"),
    "not a docx": (_fake_docx, "corrupt", "not a valid Word"),
    "truncated docx": (_truncated_docx, "corrupt", "damaged Word"),
    "whitespace only": (_whitespace_only, "no_text", "no text"),
}


@pytest.mark.parametrize("case", FAILURES)
def test_unreadable_file_raises_with_kind_and_reason(case: str, tmp_path: Path) -> None:
    make, kind, fragment = FAILURES[case]

    error = _extract_error(make(tmp_path))

    assert error.kind == kind
    assert fragment in str(error)
    assert len(str(error)) < 200 and "Traceback" not in str(error)


def test_error_survives_pickling_with_its_kind(tmp_path: Path) -> None:
    error = _extract_error(make_encrypted_pdf(tmp_path / "locked.pdf"))

    copy = pickle.loads(pickle.dumps(error))

    assert (copy.kind, str(copy)) == (error.kind, str(error))


def test_unsupported_message_lists_supported_types(tmp_path: Path) -> None:
    error = _extract_error(_unsupported(tmp_path))

    assert all(ext in str(error) for ext in SUPPORTED_EXTENSIONS)


def test_too_many_pages(tmp_path: Path) -> None:
    pdf = make_pdf(tmp_path / "long.pdf", sample_paragraphs(3))

    with pytest.raises(ExtractionError) as caught:
        list(extract_pages(pdf, max_pages=2))

    assert caught.value.kind == "too_large" and "3 pages" in str(caught.value)


# --- real PDFs made by other tools --------------------------------------------------------


@pytest.fixture
def corpus() -> Path:
    if not CORPUS.is_dir():
        pytest.skip("shared corpus folder ../shared/corpus not present")
    return CORPUS


def test_corpus_minimal_document(corpus: Path) -> None:
    pages = list(extract_pages(corpus / "minimal-document.pdf"))

    assert [p.page for p in pages] == [1]
    assert 500 < len(pages[0].text) < 700


def test_corpus_four_page_latex_document(corpus: Path) -> None:
    pages = list(extract_pages(corpus / "pdflatex-4-pages.pdf"))

    assert [p.page for p in pages] == [1, 2, 3, 4]
    assert 12_000 < sum(len(p.text) for p in pages) < 16_000
    assert all(len(p.text) > 1_000 for p in pages)


def test_corpus_password_protected(corpus: Path) -> None:
    error = _extract_error(corpus / "libreoffice-writer-password.pdf")

    assert error.kind == "encrypted" and "password" in str(error)


def test_corpus_images_only(corpus: Path) -> None:
    # Its pages carry only a stray "Background" label each: that is not a document to index.
    error = _extract_error(corpus / "imagemagick-images.pdf")

    assert error.kind == "no_text" and "no extractable text" in str(error)
