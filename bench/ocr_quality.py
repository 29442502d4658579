"""OCR quality and speed on scans whose text is known: CER and pages/s per language.

Text PDFs are generated (English and German prose, Times 11 pt on A4, reportlab) and, where
../shared/corpus is present, its pdfTeX documents are added (their text layer is the truth).
Every page is rendered to a 200-dpi grayscale image with pdfium, as a scanner would produce
it, and read by the project's OCR (expert_pipeline.text.ocr: Tesseract, one process per core).

CER = Levenshtein distance / length of the truth, both with whitespace collapsed (line breaks
and hyphenation are layout, not characters). Goal: CER <= 5 %, >= 1 page/s on this machine.

    .venv/bin/python bench/ocr_quality.py [--pages 4] [--engine tesseract|rapidocr]

`--engine rapidocr` measures RapidOCR's bundled ONNX models instead (`pip install rapidocr
onnxruntime`), the alternative the choice of Tesseract was measured against.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from expert_pipeline.text import ocr

DPI = ocr.OCR_DPI

ENGLISH = [
    "The committee met on Tuesday to review the annual budget of the town.",
    "After a long discussion, the members agreed that the library should receive additional funds.",
    "The roof of the old school had been leaking since the winter storms, and repairs could not wait.",
    "The treasurer explained that income from property taxes had risen by four percent.",
    "Several residents asked whether the swimming pool would open earlier this year.",
    "The answer was that it depends on the weather and on the number of lifeguards available.",
    "A new bus line will connect the station with the hospital from the first of March.",
    "Farmers reported a good harvest of apples, although the summer had been unusually dry.",
    "The museum plans an exhibition about the history of the river and its bridges.",
    "Volunteers cleaned the park on Saturday morning and collected forty bags of rubbish.",
    "Questions about the proposals may be sent to the town hall by letter or by e-mail.",
    "The next meeting will take place on the first Monday of the month at seven o'clock.",
]
GERMAN = [
    "Die Gemeinde hat am Dienstag über den Haushalt für das kommende Jahr beraten.",
    "Nach längerer Diskussion stimmten die Mitglieder zu, dass die Bücherei zusätzliche Mittel erhält.",
    "Das Dach der alten Schule ist seit den Stürmen im Winter undicht und muss repariert werden.",
    "Der Kämmerer erklärte, dass die Einnahmen aus der Grundsteuer um vier Prozent gestiegen sind.",
    "Mehrere Bürgerinnen und Bürger fragten, ob das Schwimmbad in diesem Jahr früher öffnet.",
    "Die Antwort lautete, dass dies vom Wetter und von der Zahl der Rettungsschwimmer abhängt.",
    "Eine neue Buslinie verbindet ab dem ersten März den Bahnhof mit dem Krankenhaus.",
    "Die Landwirte meldeten eine gute Apfelernte, obwohl der Sommer ungewöhnlich trocken war.",
    "Das Museum plant eine Ausstellung über die Geschichte des Flusses und seiner Brücken.",
    "Freiwillige säuberten am Samstagmorgen den Park und sammelten vierzig Säcke Müll.",
    "Fragen zu den Vorschlägen können schriftlich oder per E-Mail an das Rathaus gerichtet werden.",
    "Die nächste Sitzung findet am ersten Montag des Monats um neunzehn Uhr statt.",
]


def levenshtein(a: str, b: str) -> int:
    """Edit distance, one numpy row per character of `a` (a page is ~3,000 characters)."""
    if not a or not b:
        return max(len(a), len(b))
    codes_b = np.frombuffer(b.encode("utf-32-le"), dtype=np.uint32)
    positions = np.arange(len(b) + 1)
    previous = positions.copy()
    codes_a = np.frombuffer(a.encode("utf-32-le"), dtype=np.uint32)
    for i, code in enumerate(codes_a, start=1):
        substitute = previous[:-1] + (codes_b != code)
        current = np.empty_like(previous)
        current[0] = i
        current[1:] = np.minimum(previous[1:] + 1, substitute)
        # Insertions chain along the row: current[j] = min over k <= j of current[k] + (j - k).
        current = np.minimum.accumulate(current - positions) + positions
        previous = current
    return int(previous[-1])


def _flat(text: str) -> str:
    text = re.sub(r"-\n(?=[a-zäöüß])", "", text)  # line-end hyphenation is layout
    return " ".join(text.split())


def generated_pdf(sentences: list[str], pages: int, seed: int) -> tuple[bytes, list[str]]:
    """A PDF of `pages` full A4 pages of prose, and each page's text."""
    from reportlab.lib.utils import simpleSplit
    from reportlab.pdfgen import canvas

    rng = random.Random(seed)
    buffer = io.BytesIO()
    pdf = canvas.Canvas(buffer, pagesize=(595, 842))
    truths = []
    for _ in range(pages):
        paragraphs = [" ".join(rng.sample(sentences, 5)) for _ in range(6)]
        lines: list[str] = []
        for paragraph in paragraphs:
            lines += simpleSplit(paragraph, "Times-Roman", 11, 595 - 2 * 60) + [""]
        lines = lines[:52]
        text = pdf.beginText(60, 842 - 60)
        text.setFont("Times-Roman", 11)
        text.setLeading(14)
        for line in lines:
            text.textLine(line)
        pdf.drawText(text)
        pdf.showPage()
        truths.append("\n".join(lines))
    pdf.save()
    return buffer.getvalue(), truths


def corpus_pdfs() -> list[tuple[str, bytes, list[str]]]:
    from pypdf import PdfReader

    folder = ROOT.parent / "shared" / "corpus"
    found = []
    for name in ("pdflatex-4-pages.pdf", "minimal-document.pdf"):
        path = folder / name
        if path.exists():
            truths = [page.extract_text() or "" for page in PdfReader(path).pages]
            found.append((name, path.read_bytes(), truths))
    return found


def render(pdf: bytes) -> list[bytes]:
    import pypdfium2 as pdfium

    document = pdfium.PdfDocument(pdf)
    pngs = []
    for page in document:
        image = page.render(scale=DPI / 72, grayscale=True).to_pil()
        out = io.BytesIO()
        image.save(out, format="PNG")
        pngs.append(out.getvalue())
    document.close()
    return pngs


def tesseract_reader() -> Callable[[list[bytes]], list[str]]:
    engine = ocr.require_engine()

    def read(pngs: list[bytes]) -> list[str]:
        return [text for _, (text, _) in ocr._read_in_parallel(enumerate(pngs), engine)]

    return read


def rapidocr_reader() -> Callable[[list[bytes]], list[str]]:
    from rapidocr import RapidOCR  # type: ignore[import-not-found]

    engine = RapidOCR()

    def read(pngs: list[bytes]) -> list[str]:
        return ["\n".join(engine(png).txts or []) for png in pngs]

    return read


def measure(
    name: str, pngs: list[bytes], truths: list[str], read: Callable[[list[bytes]], list[str]]
) -> dict:
    started = time.perf_counter()
    cpu_before = _cpu_seconds()
    texts = read(pngs)
    seconds = time.perf_counter() - started
    cpu = _cpu_seconds() - cpu_before
    errors = sum(levenshtein(_flat(t), _flat(r)) for t, r in zip(texts, truths, strict=True))
    length = sum(len(_flat(r)) for r in truths)
    return {
        "document": name,
        "pages": len(pngs),
        "characters": length,
        "cer": errors / max(length, 1),
        "pages_per_second": len(pngs) / seconds,
        # CPU time is what other work on a shared machine cannot inflate: one core's cost per page.
        "cpu_seconds_per_page": cpu / len(pngs),
        "pages_per_second_on_idle_cores": ocr.ocr_workers() * len(pngs) / cpu if cpu else None,
    }


def _cpu_seconds() -> float:
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)  # the Tesseract processes
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pages", type=int, default=4, help="generated pages per language")
    parser.add_argument("--engine", choices=["tesseract", "rapidocr"], default="tesseract")
    args = parser.parse_args()
    read = tesseract_reader() if args.engine == "tesseract" else rapidocr_reader()
    documents = [
        ("english (generated)", *generated_pdf(ENGLISH, args.pages, seed=1)),
        ("german (generated)", *generated_pdf(GERMAN, args.pages, seed=2)),
        *corpus_pdfs(),
    ]
    read(render(documents[0][1])[:1])  # warm-up: model files into the page cache
    rows = []
    print(f"engine: {args.engine}  dpi: {DPI}  workers: {ocr.ocr_workers()}")
    print(f"load average: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(
        f"{'document':28} {'pages':>5} {'chars':>7} {'CER':>7} {'pages/s':>8} {'cpu s/page':>10} {'idle pages/s':>12}"
    )
    for name, pdf, truths in documents:
        row = measure(name, render(pdf), truths, read)
        rows.append(row)
        print(
            f"{name:28} {row['pages']:5d} {row['characters']:7d} "
            f"{100 * row['cer']:6.2f}% {row['pages_per_second']:8.2f} {row['cpu_seconds_per_page']:10.2f} "
            f"{row['pages_per_second_on_idle_cores'] or 0:12.2f}"
        )
    goal = all(r["cer"] <= 0.05 for r in rows) and all(r["pages_per_second"] >= 1.0 for r in rows)
    print(f"goal (CER <= 5 %, >= 1 page/s wall clock on every document): {'met' if goal else 'NOT met'}")
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    figures = {
        "load_average": os.getloadavg()[0],
        "engine": args.engine,
        "dpi": DPI,
        "workers": ocr.ocr_workers(),
        "rows": rows,
        "goal_met": goal,
    }
    (out / f"ocr_quality_{args.engine}.json").write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
