"""Retrieval quality: hit@5 and MRR of vector-only, keyword-only and hybrid retrieval.

    .venv/bin/python bench/retrieval_quality.py [--top-k 5] [--verbose]

Documents: the text PDFs of ../shared/corpus (written by other tools; the password-protected
and image-only samples are skipped as ingestion fails them) plus PDFs generated here with exact
terms that vectors tend to miss: part codes, names, numbers, a German maintenance manual, and
two documents of unrelated prose as distractors. They are indexed with the embedded pipeline's
own parts: `extract_pages` (the pipeline's extraction and cleaning), `chunk_pages` at the
pipeline's settings (256 tokens, 32 overlap, counted by the model), the local embedder
(`LocalEmbedder`, all-MiniLM-L6-v2) and `LanceDBVectorStore` (native full-text index), with
the same metadata the vectors asset writes. Each question names the file and page that answer
it (any page of the file where the text repeats on every page); a hit is a retrieved chunk of
that file whose page range holds that page. Questions are "exact" (a code, name, number or
German term, typed as a person searching would) or "natural" (a paraphrase). MRR counts the
first hit's rank within the top k (0 when none). Figures go to bench/results/retrieval_quality.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from expert_pipeline import retrieval
from expert_pipeline.adapters.embedder import LocalEmbedder
from expert_pipeline.adapters.vector_store import LanceDBVectorStore, VectorRecord, vector_id
from expert_pipeline.core.settings import Settings
from expert_pipeline.text.chunking import chunk_pages
from expert_pipeline.text.extraction import extract_pages
from expert_pipeline.text.pages import ExtractionError
from tests.fixture_documents import make_pdf, sample_paragraphs

CORPUS = ROOT.parent / "shared" / "corpus"
EXPERT = "bench-retrieval"
MODES: tuple[retrieval.Mode, ...] = ("vector", "keyword", "hybrid")

# -- generated documents (one string per page) --------------------------------------------------

_ENGINES = ["V6", "V8", "inline four", "diesel", "marine"]
PUMP_CATALOGUE = [
    "Coolant pump housings and gaskets\n\n"
    + "\n".join(
        f"Part XR-{7700 + i} is a coolant pump housing gasket for the {engine} engine series; "
        f"replace it during the {hours}-hour service."
        for i, (engine, hours) in enumerate((e, h) for e in _ENGINES for h in (500, 1000, 2000, 4000))
    ),
    "Seals and bearings\n\n"
    + "\n".join(
        f"Seal SL-{2080 + i} fits the impeller shaft of pump series {s}; it is made of {m}."
        for i, (s, m) in enumerate((s, m) for s in ("A", "B", "C") for m in ("FKM", "EPDM", "NBR"))
    )
    + "\n"
    + "\n".join(
        f"Bearing BRG-{4410 + i}-Z is a sealed deep-groove ball bearing for the drive end of pump series {s}."
        for i, s in enumerate("ABCDEF")
    )
    + "\nBearing BRG-4417-Z is rated for 12,500 rpm and ships pre-greased with Klüberplex BEM 41-132.",
    (
        "Stock and ordering notes\n\n"
        "Most housings are made to order; allow three weeks for castings. The spare kit we keep on "
        "shelf B holds the seal XR-7731, ordered from Hamburg in March. Order code KX-0042 covers the "
        "impeller repair set: impeller, wear ring, shaft sleeve and two circlips. Our main supplier, "
        "Nordhafen Hydraulik GmbH, delivers within 9 working days of a confirmed order; rush orders "
        "cost a surcharge of 18 percent. Returns need an RMA number from the service desk."
    ),
]
WARTUNGSHANDBUCH = [
    (
        "Kapitel 3: Kühlkreislauf\n\n"
        "Die Kühlmittelpumpe ist alle 4000 Betriebsstunden zu tauschen, spätestens jedoch nach fünf "
        "Jahren. Vor dem Ausbau das Kühlmittel vollständig ablassen und in einem geeigneten Behälter "
        "auffangen. Den Keilriemen entspannen und abnehmen. Die Befestigungsschrauben der Pumpe über "
        "Kreuz lösen. Die Dichtflächen gründlich reinigen; alte Dichtungsreste dürfen nicht in den "
        "Kreislauf gelangen. Nach dem Einbau den Kreislauf entlüften und den Füllstand prüfen."
    ),
    (
        "Kapitel 4: Zylinderkopf\n\n"
        "Die Zylinderkopfschrauben werden in drei Stufen angezogen: zuerst mit 30 Nm, dann mit 60 Nm "
        "und abschließend um 90 Grad Drehwinkel. Die Schrauben sind Dehnschrauben und dürfen nur "
        "einmal verwendet werden. Als Dichtmasse für den Ventildeckel ist ausschließlich Loctite 5910 "
        "zugelassen. Die Ventilspiele werden bei kaltem Motor eingestellt."
    ),
    (
        "Kapitel 5: Arbeitssicherheit\n\n"
        "Bei allen Arbeiten am laufenden Prüfstand sind Schutzbrille und Gehörschutz zu tragen. Der "
        "Not-Aus-Schalter befindet sich rechts neben dem Bedienpult und muss jederzeit frei zugänglich "
        "sein. Jede Prüfung wird im Prüfprotokoll auf Formular QS-118 dokumentiert und vom "
        "Schichtleiter gegengezeichnet. Verletzungen sind sofort dem Betriebsarzt zu melden."
    ),
]
_ENGINEERING = [
    ("Ingrid Vasquez-Oyelaran", "lead hydraulics engineer", 4471, "B-214"),
    ("Tomasz Wierzbicki", "test bench technician who runs the endurance test rig", 4480, "B-009"),
    ("Priyanka Raghunathan", "simulation engineer for flow and cavitation", 4473, "B-216"),
    ("Olusegun Adeyemi-Hart", "materials engineer for seals and elastomers", 4476, "B-220"),
    ("Maren Halvorsen", "design engineer for pump housings", 4478, "B-222"),
    ("Dmitri Kaszubowski", "electrical engineer for motor drives", 4482, "B-011"),
]
_PURCHASING = [
    ("Aurelie Fontaine-Mbeki", "buyer for castings and machined parts", 5120, "C-101"),
    ("Henrik Solberg-Acheampong", "supplier quality manager who leads supplier audits", 5124, "C-105"),
    ("Yui Takahashi-Brandt", "logistics coordinator for inbound freight", 5127, "C-108"),
    ("Carlos Ibarra Quintero", "buyer for electronics and cables", 5131, "C-110"),
    ("Fenna Dijkstra", "quality inspector for incoming goods", 5133, "C-112"),
]
STAFF_DIRECTORY = [
    "Engineering\n\n" + "\n".join(f"{n}, {r}, extension {x}, room {room}." for n, r, x, room in _ENGINEERING),
    "Purchasing and quality\n\n"
    + "\n".join(f"{n}, {r}, extension {x}, room {room}." for n, r, x, room in _PURCHASING),
]
PROJECT_MINUTES = [
    (
        "Kick-off meeting, 12 January\n\n"
        "The steering group approved a budget of EUR 1,284,500 for the new pump generation, to be "
        "spent over two years. A test rig for endurance runs is to be built first; ticket PRJ-5521 "
        "tracks it. The first prototype is due at the end of April."
    ),
    (
        "Design review, 9 March\n\n"
        "The prototype showed strong vibration at 3,150 rpm. The cause was traced to a loose mounting "
        "bracket on the motor side, not to the impeller; a stiffer bracket is being made (ticket "
        "PRJ-5604). Noise measurements will be repeated once it is fitted."
    ),
    (
        "Status meeting, 4 May\n\n"
        "The field trial with the municipal water utility was postponed by six weeks because the "
        "utility's pumping station is being rebuilt. The supplier audit was moved to 17 June at the "
        "supplier's request. The team agreed to use the extra time for a second noise test."
    ),
]


@dataclass(frozen=True)
class Question:
    text: str
    filename: str
    page: int | None  # None: any page of the file (its text repeats on every page)
    kind: str  # "exact" or "natural"


QUESTIONS = [
    # The shared corpus (real PDFs from other tools).
    Question("Lorem ipsum dolor sit amet", "minimal-document.pdf", 1, "exact"),
    Question("Stet clita kasd gubergren", "minimal-document.pdf", 1, "exact"),
    Question("Huardest gefburn", "pdflatex-4-pages.pdf", None, "exact"),
    Question(
        "What does a blind text tell you about the selected font?", "pdflatex-4-pages.pdf", None, "natural"
    ),
    # Part codes and suppliers.
    Question("XR-7731", "pump_catalogue.pdf", 3, "exact"),
    Question("Where is the seal XR-7731 kept?", "pump_catalogue.pdf", 3, "exact"),
    Question("XR-7712", "pump_catalogue.pdf", 1, "exact"),
    Question(
        "Which gasket fits the marine engine at the 2000-hour service?", "pump_catalogue.pdf", 1, "natural"
    ),
    Question("BRG-4417-Z", "pump_catalogue.pdf", 2, "exact"),
    Question("What speed is bearing BRG-4417-Z rated for?", "pump_catalogue.pdf", 2, "exact"),
    Question("Klüberplex BEM 41-132", "pump_catalogue.pdf", 2, "exact"),
    Question("KX-0042", "pump_catalogue.pdf", 3, "exact"),
    Question("Which order code covers the impeller repair set?", "pump_catalogue.pdf", 3, "natural"),
    Question("How long does the supplier take to deliver an order?", "pump_catalogue.pdf", 3, "natural"),
    # German (the embedding model is English).
    Question("Kühlmittelpumpe tauschen", "wartungshandbuch.pdf", 1, "exact"),
    Question("Wann muss die Kühlmittelpumpe getauscht werden?", "wartungshandbuch.pdf", 1, "exact"),
    Question("How often must the coolant pump be replaced?", "wartungshandbuch.pdf", 1, "natural"),
    Question("Zylinderkopfschrauben Drehwinkel", "wartungshandbuch.pdf", 2, "exact"),
    Question("Loctite 5910", "wartungshandbuch.pdf", 2, "exact"),
    Question("Wo befindet sich der Not-Aus-Schalter?", "wartungshandbuch.pdf", 3, "exact"),
    Question("QS-118", "wartungshandbuch.pdf", 3, "exact"),
    Question(
        "What protective equipment must be worn at the test bench?", "wartungshandbuch.pdf", 3, "natural"
    ),
    # Names, extensions, rooms.
    Question("Ingrid Vasquez-Oyelaran", "staff_directory.pdf", 1, "exact"),
    Question("What is Tomasz Wierzbicki's extension?", "staff_directory.pdf", 1, "exact"),
    Question("Who sits in room B-214?", "staff_directory.pdf", 1, "exact"),
    Question("extension 5120", "staff_directory.pdf", 2, "exact"),
    Question("Aurelie Fontaine-Mbeki", "staff_directory.pdf", 2, "exact"),
    Question("Who is responsible for supplier audits?", "staff_directory.pdf", 2, "natural"),
    Question("Who runs the endurance test rig?", "staff_directory.pdf", 1, "natural"),
    # Amounts, tickets, dates.
    Question("How much budget was approved at the kick-off?", "project_minutes.pdf", 1, "natural"),
    Question("1,284,500", "project_minutes.pdf", 1, "exact"),
    Question("PRJ-5521", "project_minutes.pdf", 1, "exact"),
    Question("What caused the vibration at 3,150 rpm?", "project_minutes.pdf", 2, "natural"),
    Question("PRJ-5604", "project_minutes.pdf", 2, "exact"),
    Question("When will the supplier audit take place?", "project_minutes.pdf", 3, "natural"),
    Question("Why was the field trial postponed?", "project_minutes.pdf", 3, "natural"),
]


def documents(folder: Path) -> list[Path]:
    paths = [
        CORPUS / name for name in ("minimal-document.pdf", "pdflatex-4-pages.pdf") if (CORPUS / name).exists()
    ]
    generated = {
        "pump_catalogue.pdf": PUMP_CATALOGUE,
        "wartungshandbuch.pdf": WARTUNGSHANDBUCH,
        "staff_directory.pdf": STAFF_DIRECTORY,
        "project_minutes.pdf": PROJECT_MINUTES,
        # Distractors: prose about other things (names, places, numbers of their own).
        **{
            f"{name}.pdf": ["\n\n".join(sample_paragraphs(6, seed=seed + p)) for p in range(8)]
            for name, seed in (("field_notes", 900), ("travel_journal", 950), ("archive_letters", 1000))
        },
    }
    paths += [make_pdf(folder / name, pages) for name, pages in generated.items()]
    return paths


def index(paths: list[Path], embedder: LocalEmbedder, store: LanceDBVectorStore) -> int:
    """Extract, chunk, embed and store every document as the pipeline does; the chunk count."""
    settings = Settings()
    max_tokens = min(settings.chunk_max_tokens, embedder.max_input_tokens)
    total = 0
    for file_index, path in enumerate(paths):
        try:
            pages = list(extract_pages(path))
        except ExtractionError as exc:
            print(f"skipped {path.name}: {exc}")
            continue
        chunks = list(
            chunk_pages(
                pages,
                path.name,
                count_tokens=embedder.count_tokens,
                max_tokens=max_tokens,
                overlap_tokens=settings.chunk_overlap_tokens,
            )
        )
        vectors = embedder.embed([c.text for c in chunks])
        file_id = f"file-{file_index}"
        store.upsert(
            EXPERT,
            [
                VectorRecord(
                    id=vector_id(EXPERT, file_id, c.index),
                    values=v,
                    metadata={
                        "expert_id": EXPERT,
                        "file_id": file_id,
                        "filename": path.name,
                        "page": c.page,
                        "page_end": c.page_end if c.page_end is not None else c.page,
                        "chunk_index": c.index,
                        "text": c.text,
                    },
                )
                for c, v in zip(chunks, vectors, strict=True)
            ],
        )
        total += len(chunks)
    return total


def first_hit(passages: list[retrieval.Passage], question: Question) -> int | None:
    """1-based rank of the first passage that answers `question`, or None."""
    for rank, passage in enumerate(passages, 1):
        meta = passage.metadata
        if meta.get("filename") != question.filename:
            continue
        start = int(meta.get("page") or 0)
        end = int(meta.get("page_end") or start)
        if question.page is None or start <= question.page <= end:
            return rank
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--verbose", action="store_true", help="print each question's rank per mode")
    args = parser.parse_args()

    embedder = LocalEmbedder()
    embedder.warm_up()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        store = LanceDBVectorStore(uri=str(folder / "vectors"))
        paths = documents(folder)
        started = time.monotonic()
        chunks = index(paths, embedder, store)
        print(
            f"indexed {len(paths)} documents, {chunks} chunks in {time.monotonic() - started:.1f} s; "
            f"{len(QUESTIONS)} questions; model {embedder.model_name}"
        )

        ranks: dict[str, list[int | None]] = {mode: [] for mode in MODES}
        seconds: dict[str, float] = dict.fromkeys(MODES, 0.0)
        for question in QUESTIONS:
            for mode in MODES:
                began = time.perf_counter()
                passages = retrieval.search(
                    embedder, store, EXPERT, question.text, top_k=args.top_k, mode=mode
                )
                seconds[mode] += time.perf_counter() - began
                ranks[mode].append(first_hit(passages, question))
            if args.verbose:
                print(
                    f"  {question.kind:7} {question.text[:56]:56} "
                    + "  ".join(f"{mode}={ranks[mode][-1] or '-'}" for mode in MODES)
                )

    def figures(mode: str, kind: str | None) -> dict[str, float]:
        chosen = [r for q, r in zip(QUESTIONS, ranks[mode], strict=True) if kind is None or q.kind == kind]
        hits = sum(1 for r in chosen if r is not None)
        return {
            "questions": len(chosen),
            f"hit@{args.top_k}": round(hits / len(chosen), 3),
            "mrr": round(sum(1 / r for r in chosen if r is not None) / len(chosen), 3),
        }

    k = args.top_k
    results = {
        mode: {kind or "all": figures(mode, kind) for kind in (None, "exact", "natural")} for mode in MODES
    }
    print(
        f"\n{'questions':18} {'vector hit@' + str(k):>14} {'MRR':>6} {'keyword hit@' + str(k):>15} {'MRR':>6}"
        f" {'hybrid hit@' + str(k):>14} {'MRR':>6}"
    )
    for kind in ("all", "exact", "natural"):
        n = results["vector"][kind]["questions"]
        cells = "".join(
            f" {results[m][kind][f'hit@{k}']:>{14 if m != 'keyword' else 15}.3f} {results[m][kind]['mrr']:>6.3f}"
            for m in MODES
        )
        print(f"{kind + f' ({n})':18}{cells}")
    per_query_ms = {m: round(1000 * seconds[m] / len(QUESTIONS), 1) for m in MODES}
    print("ms per query: " + ", ".join(f"{m} {v}" for m, v in per_query_ms.items()))

    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "retrieval_quality.json").write_text(
        json.dumps(
            {
                "top_k": k,
                "documents": [p.name for p in paths],
                "chunks": chunks,
                "questions": len(QUESTIONS),
                "results": results,
                "ms_per_query": per_query_ms,
                "ranks": {m: ranks[m] for m in MODES},
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
