"""Scanned pages become searchable text by OCR, inside the bounded extraction worker."""

from __future__ import annotations

import random
import threading
from pathlib import Path

import dagster as dg
import httpx
import pytest
from pypdf import PdfReader, PdfWriter
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from expert_pipeline.core.db import engine_for
from expert_pipeline.core.models import ExpertFile
from expert_pipeline.core.progress_service import ExpertProcessingProgressService
from expert_pipeline.core.settings import Settings
from expert_pipeline.ingest.progress_plan import RateEstimator, ocr_eta
from expert_pipeline.ingest.work_area import ExpertWorkArea
from expert_pipeline.text import ocr
from expert_pipeline.text.extraction import ExtractionError, extract_pages
from expert_pipeline.text.formats import pdf as pdf_format
from expert_pipeline.text.isolated_extraction import ExtractionLimits, IsolatedExtractor
from tests.fixture_documents import make_pdf, sample_paragraphs
from tests.pipeline_helpers import create_expert, run_ingest

needs_tesseract = pytest.mark.skipif(
    ocr.find_engine() is None, reason=f"Tesseract is not installed ({ocr.INSTALL_HINT})"
)

SCANNED_TEXT = [
    "The lighthouse keeper recorded seventeen ships passing the northern cape.",
    "Die Brücke über den Fluss wurde im Frühling für den Verkehr geöffnet.",
]


def _scan(source: Path, target: Path, dpi: int = 200) -> Path:
    """`source` rendered to images and wrapped in a PDF with no text layer, like a scanner's."""
    import pypdfium2 as pdfium

    document = pdfium.PdfDocument(str(source))
    images = [page.render(scale=dpi / 72, grayscale=True).to_pil() for page in document]
    document.close()
    images[0].save(target, format="PDF", resolution=dpi, save_all=True, append_images=images[1:])
    return target


def _short_pages(path: Path, texts: list[str]) -> Path:
    # Short pages: OCR time grows with the page area, and the tests stay fast.
    from reportlab.pdfgen import canvas

    pdf = canvas.Canvas(str(path), pagesize=(595, 160))
    for text in texts:
        pdf.setFont("Helvetica", 12)
        pdf.drawString(40, 100, text)
        pdf.showPage()
    pdf.save()
    return path


@needs_tesseract
def test_a_scanned_page_becomes_searchable_text(tmp_path: Path) -> None:
    scan = _scan(_short_pages(tmp_path / "typed.pdf", SCANNED_TEXT), tmp_path / "scan.pdf")
    assert not "".join(page.extract_text() for page in PdfReader(scan).pages).strip()

    pages = list(extract_pages(scan))

    assert [p.page for p in pages] == [1, 2]
    assert "lighthouse keeper recorded seventeen ships" in pages[0].text
    assert all(word in pages[1].text for word in ("Brücke", "Fluss", "Frühling", "geöffnet"))


@needs_tesseract
def test_ocr_runs_in_the_worker_and_reports_each_page(tmp_path: Path) -> None:
    scan = _scan(_short_pages(tmp_path / "typed.pdf", SCANNED_TEXT), tmp_path / "scan.pdf")
    work = ExpertWorkArea(tmp_path / "work", "expert-1")
    seen: list[tuple[int, int]] = []

    with IsolatedExtractor(ExtractionLimits(timeout_seconds=60, memory_mb=2048)) as extractor:
        extracted = extractor.extract(
            work,
            "file-1", scan, "scan.pdf", lambda done, total: seen.append((done, total))
        )

    assert extracted.pages == 2
    assert "seventeen ships" in next(work.read_pages("file-1")).text
    assert seen and seen[-1] == (2, 2) and all(total == 2 for _, total in seen)


@needs_tesseract
def test_only_pages_without_text_are_read_by_ocr(tmp_path: Path) -> None:
    typed = make_pdf(tmp_path / "typed.pdf", ["A typed page with a real text layer and enough words."])
    scanned = _scan(_short_pages(tmp_path / "short.pdf", SCANNED_TEXT[:1]), tmp_path / "scan.pdf")
    mixed = tmp_path / "mixed.pdf"
    writer = PdfWriter()
    writer.append(str(typed))
    writer.append(str(scanned))
    writer.write(mixed)
    calls: list[tuple[int, int]] = []

    pages = list(extract_pages(mixed, on_ocr_page=lambda done, total: calls.append((done, total))))

    assert "typed page with a real text layer" in pages[0].text
    assert "lighthouse keeper" in pages[1].text
    assert calls == [(1, 1)]


@needs_tesseract
def test_a_photograph_without_text_still_fails_with_a_reason(tmp_path: Path) -> None:
    from PIL import Image, ImageDraw, ImageFilter

    rng = random.Random(3)
    photo = Image.new("RGB", (600, 400), (120, 160, 200))
    draw = ImageDraw.Draw(photo)
    for _ in range(60):
        x, y = rng.randrange(600), rng.randrange(400)
        colour = tuple(rng.randrange(256) for _ in range(3))
        draw.ellipse((x, y, x + rng.randrange(20, 120), y + rng.randrange(20, 90)), fill=colour)
    photo = photo.filter(ImageFilter.GaussianBlur(2))
    path = tmp_path / "holiday.pdf"
    photo.save(path, format="PDF", resolution=100)

    with pytest.raises(ExtractionError) as caught:
        list(extract_pages(path))

    assert caught.value.kind == "no_text"
    assert "OCR found no text" in str(caught.value)


def test_without_ocr_a_scan_fails_saying_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ocr, "find_engine", lambda: None)
    monkeypatch.setattr(pdf_format, "find_engine", lambda: None)
    scan = _scan(_short_pages(tmp_path / "typed.pdf", SCANNED_TEXT[:1]), tmp_path / "scan.pdf", dpi=72)

    with pytest.raises(ExtractionError) as caught:
        list(extract_pages(scan))

    assert caught.value.kind == "no_text"
    assert str(caught.value).startswith("OCR unavailable: install tesseract-ocr")


@needs_tesseract
def test_a_scanned_two_column_page_reads_column_by_column(tmp_path: Path) -> None:
    from tests.test_text_cleaning import LEFT, RIGHT, _canvas_pdf

    strings = []
    for i, (left, right) in enumerate(zip(LEFT, RIGHT, strict=True)):
        strings += [(40, 780 - 14 * i, left), (310, 780 - 14 * i, right)]
    scan = _scan(_canvas_pdf(tmp_path / "columns.pdf", [strings]), tmp_path / "scan.pdf")

    text = " ".join(" ".join(page.text for page in extract_pages(scan)).split())

    assert text.index("left column finishes") < text.index("Beta column is a second story")
    assert "Alpha column opens with the first line here and the left column" in text


@pytest.mark.slow
@needs_tesseract
def test_a_scanned_pdf_becomes_an_indexed_file_with_ocr_progress(
    settings: Settings, instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    texts = [*SCANNED_TEXT, "The archive keeps three hundred letters written by the first mayor."]
    scan = _scan(_short_pages(tmp_path / "typed.pdf", texts), tmp_path / "letters.pdf")
    fast = settings.model_copy(update={"progress_min_write_interval_seconds": 0.0})
    expert_id = create_expert(fast, [scan])
    seen: set[str] = set()
    stop = threading.Event()

    def sample() -> None:
        engine = engine_for(fast.resolved_database_url)
        while not stop.is_set():
            try:
                with Session(engine) as session:
                    record = ExpertProcessingProgressService(session).get_progress(expert_id)
            except OperationalError:  # SQLite busy with the run's own write: read again
                record = None
            if record is not None and (record.details or {}).get("ocr"):
                seen.add(record.details["ocr"])
            stop.wait(0.01)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        result = run_ingest(fast, expert_id, instance)
    finally:
        stop.set()
        sampler.join(timeout=10)

    assert result.success
    with Session(engine_for(fast.resolved_database_url)) as session:
        (stored,) = session.query(ExpertFile).filter_by(expert_id=expert_id).all()
    assert (stored.status, stored.pages) == ("indexed", 3) and (stored.chunks or 0) > 0
    assert seen and seen <= {f"OCR page {n} of 3" for n in (1, 2, 3)}


@pytest.mark.slow
@needs_tesseract
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_scan_uploaded_through_the_api_answers_with_the_right_page(
    settings: Settings, instance: dg.DagsterInstance, tmp_path: Path, http: httpx.Client
) -> None:
    # Full pages, so each page's text is chunked on its own and a source names one page.
    pages = [
        "\n\n".join(sample_paragraphs(4, seed=71)),
        "\n\n".join([*sample_paragraphs(3, seed=72), SCANNED_TEXT[1]]),
        "\n\n".join(
            [
                *sample_paragraphs(3, seed=73),
                "The archive keeps three hundred letters written by the first mayor.",
            ]
        ),
    ]
    scan = _scan(make_pdf(tmp_path / "typed.pdf", pages), tmp_path / "letters.pdf")
    with scan.open("rb") as handle:
        created = http.post(
            "/api/experts", data={"name": "Archive"}, files={"files": ("letters.pdf", handle)}
        )
    assert created.status_code == 201, created.text
    expert_id = created.json()["expert"]["id"]
    assert run_ingest(settings, expert_id, instance).success

    answer = http.post(
        f"/api/experts/{expert_id}/chat", json={"message": "How many letters does the archive keep?"}
    )
    assert answer.status_code == 200, answer.text
    assert "three hundred letters" in answer.json()["answer"]
    source = answer.json()["sources"][0]
    assert (source["filename"], source["page"]) == ("letters.pdf", 3)
    found = http.post(f"/api/experts/{expert_id}/search", json={"query": "Brücke Fluss", "top_k": 1})
    assert found.status_code == 200, found.text
    assert found.json()["results"][0]["page"] == 2 and "Brücke" in found.json()["results"][0]["text"]


def test_the_eta_while_ocr_reads_counts_its_pages_and_the_later_stages() -> None:
    rate = RateEstimator()
    rate.observe(100.0, 0)
    assert ocr_eta(rate, 10, later_seconds=30.0) is None  # no guess before any page is read
    for second, done in ((102.0, 1), (104.0, 2), (106.0, 3)):
        rate.observe(second, done)

    assert ocr_eta(rate, 7, later_seconds=30.0) == pytest.approx(7 * 2.0 + 30.0)
    assert ocr_eta(rate, 7, later_seconds=None) == pytest.approx(7 * 2.0)


@needs_tesseract
def test_a_page_whose_text_layer_is_debris_is_read_by_ocr(tmp_path: Path) -> None:
    import pypdfium2 as pdfium
    from reportlab.lib.utils import ImageReader
    from reportlab.pdfgen import canvas

    typed = pdfium.PdfDocument(str(_short_pages(tmp_path / "typed.pdf", SCANNED_TEXT[:1])))
    image = ImageReader(typed[0].render(scale=200 / 72, grayscale=True).to_pil())
    path = tmp_path / "broken-font.pdf"
    pdf = canvas.Canvas(str(path), pagesize=(595, 160))
    pdf.drawImage(image, 0, 0, width=595, height=160)
    # What a font without a usable encoding extracts as: glyph ids read as symbols.
    pdf.setFont("Helvetica", 1)
    pdf.drawString(40, 100, "#$%& *+<=> @[]^ _{|}~ #$%& *+<=> @[]^ _{|}~ 1")
    pdf.save()

    (page,) = extract_pages(path)

    assert "lighthouse keeper recorded seventeen ships" in page.text
    assert "@[]^" not in page.text


@needs_tesseract
def test_when_tesseract_fails_on_every_page_the_reason_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ocr, "ocr_png", lambda png, engine: ("", "Tesseract failed (exit code 1)"))
    scan = _scan(_short_pages(tmp_path / "typed.pdf", SCANNED_TEXT), tmp_path / "scan.pdf", dpi=72)

    with pytest.raises(ExtractionError) as caught:
        list(extract_pages(scan))

    assert str(caught.value) == (
        "no extractable text: OCR failed on 2 of 2 pages (page 1: Tesseract failed (exit code 1))"
    )
