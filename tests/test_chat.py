"""Chatting with an expert: refused until it is ready, then answers that cite file and page."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg
import httpx
from sqlalchemy.orm import Session

from expert_pipeline.chat.extractive import NO_MATCHES, answer, split_sentences, terms
from expert_pipeline.core.db import engine_for
from expert_pipeline.core.progress_service import ExpertProcessingProgressService
from expert_pipeline.core.settings import Settings
from tests.fixture_documents import make_pdf, sample_paragraphs
from tests.pipeline_helpers import create_expert, run_ingest

FACT = "The lighthouse keeper Marisol Quenneville painted exactly 4,317 violet shutters in Port Elspeth in 1887."
QUESTION = "How many violet shutters did Marisol Quenneville paint?"


@dataclass
class Match:
    score: float
    metadata: dict[str, Any] = field(default_factory=dict)


def passage(text: str, filename: str = "a.pdf", page: int = 1, score: float = 0.5) -> Match:
    return Match(score=score, metadata={"filename": filename, "page": page, "text": text})


# -- the extractive answer, directly ------------------------------------------------------------


def test_extractive_answer_quotes_the_relevant_sentence_and_cites_it() -> None:
    matches = [
        passage("Copper kettles were catalogued in Lisbon. Ferry routes changed in 1902.", "notes.pdf", 1, 0.62),
        passage(f"Weather balloons rose over Cork. {FACT} Nobody had seen so many.", "keeper.pdf", 3, 0.55),
        passage("Moss gardens were measured in Kyoto by Hiroshi.", "notes.pdf", 2, 0.31),
    ]
    text, sources = answer(QUESTION, matches)
    assert FACT in text
    assert f"{FACT} [1]" in text  # the marker follows the sentence it supports
    assert [(s.filename, s.page) for s in sources] == [("keeper.pdf", 3)]
    assert sources[0].text == matches[1].metadata["text"] and sources[0].score == 0.55
    # Unrelated sentences are left out.
    assert "Copper kettles" not in text and "Moss gardens" not in text


def test_extractive_answer_numbers_sources_in_citation_order() -> None:
    matches = [
        passage("Greta measured glacier ice near the salt flats in 1921.", "ice.pdf", 4, 0.7),
        passage("Glacier ice from the salt flats was unusually fragile, Greta wrote.", "more.pdf", 9, 0.6),
        passage("Sourdough cultures were studied in Tallinn.", "bread.pdf", 1, 0.2),
    ]
    text, sources = answer("What did Greta find about glacier ice at the salt flats?", matches)
    markers = [int(m) for m in __import__("re").findall(r"\[(\d+)\]", text)]
    assert markers and max(markers) == len(sources)
    assert sorted(set(markers)) == list(range(1, len(sources) + 1))
    assert {(s.filename, s.page) for s in sources} <= {("ice.pdf", 4), ("more.pdf", 9)}
    assert "Sourdough" not in text


def test_extractive_answer_without_matches_or_overlap_says_so() -> None:
    assert answer("anything?", []) == (NO_MATCHES, [])
    text, sources = answer("quantum chromodynamics?", [passage("Bees make honey. Honey is sweet.", "bees.pdf", 2)])
    assert text.startswith("I could not find a passage that answers this directly")
    assert "bees.pdf, page 2" in text and "[1]" in text
    assert [(s.filename, s.page) for s in sources] == [("bees.pdf", 2)]


def test_text_helpers() -> None:
    assert split_sentences("One. Two!  Three?\n\nFour") == ["One.", "Two!", "Three?", "Four"]
    assert terms("How many Violet shutters did Marisol's crew paint in 1887, 4,317?") == [
        "violet", "shutter", "marisol", "crew", "paint", "1887", "4,317",
    ]


# -- over HTTP ---------------------------------------------------------------------------------


def _progress(settings: Settings) -> Session:
    return Session(engine_for(settings.resolved_database_url), expire_on_commit=False)


def test_chat_is_refused_until_processing_completes(http: httpx.Client, settings: Settings, tmp_path: Path) -> None:
    doc = tmp_path / "a.txt"
    doc.write_text("Something to read.")
    expert_id = create_expert(settings, [doc], name="Tides")

    pending = http.post(f"/api/experts/{expert_id}/chat", json={"message": "Hello?"})
    assert pending.status_code == 409
    assert pending.json() == {"success": False, "error": "Tides is not ready yet: queued, 0% done"}

    with _progress(settings) as session:
        ExpertProcessingProgressService(session).update_progress(
            expert_id, stage="embedding", progress_percentage=45.7, current_batch=5, total_batches=11
        )
    busy = http.post(f"/api/experts/{expert_id}/chat", json={"message": "Hello?"})
    assert busy.status_code == 409
    assert busy.json()["error"] == "Tides is not ready yet: generating embeddings, 45% done"

    with _progress(settings) as session:
        ExpertProcessingProgressService(session).mark_failed(expert_id, "OpenAI API error")
    failed = http.post(f"/api/experts/{expert_id}/chat", json={"message": "Hello?"})
    assert failed.status_code == 409
    assert failed.json()["error"] == "Tides is not ready yet: failed, 45% done (OpenAI API error)"


def test_chat_validates_the_message_and_the_expert(http: httpx.Client, settings: Settings, tmp_path: Path) -> None:
    doc = tmp_path / "a.txt"
    doc.write_text("Something to read.")
    expert_id = create_expert(settings, [doc], name="Tides")
    for body in ({"message": ""}, {"message": "   "}, {}, {"message": "x" * 2001}):
        response = http.post(f"/api/experts/{expert_id}/chat", json=body)
        assert response.status_code == 422, body
        assert response.json()["success"] is False and "message" in response.json()["error"]
    assert http.post(f"/api/experts/{expert_id}/chat", json={"message": "x" * 2000}).status_code == 409
    missing = http.post("/api/experts/no-such-expert/chat", json={"message": "Hello?"})
    assert missing.status_code == 404
    assert missing.json() == {"success": False, "error": "No expert 'no-such-expert'"}


def test_chat_after_ingest_cites_the_right_file_and_page(
    http: httpx.Client, settings: Settings, instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    # The fact sits deep inside page 3 (after more than a chunk of page-3 text), so the chunk
    # holding it starts on page 3; a second document is about other things.
    page3 = sample_paragraphs(8, seed=33)
    page3.insert(5, FACT)
    keeper = make_pdf(
        tmp_path / "keeper.pdf",
        ["\n\n".join(sample_paragraphs(5, seed=31)), "\n\n".join(sample_paragraphs(5, seed=32)), "\n\n".join(page3)],
    )
    other = make_pdf(tmp_path / "other.pdf", ["\n\n".join(sample_paragraphs(6, seed=34))])
    expert_id = create_expert(settings, [keeper, other], name="Keeper")
    assert run_ingest(settings, expert_id, instance).success

    response = http.post(f"/api/experts/{expert_id}/chat", json={"message": QUESTION})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["success"] is True
    assert FACT in body["answer"]
    assert "[1]" in body["answer"]
    first = body["sources"][0]
    assert (first["filename"], first["page"]) == ("keeper.pdf", 3)
    assert FACT in " ".join(first["text"].split()) and 0 < first["score"] <= 1
    assert set(first) == {"filename", "page", "page_end", "text", "score"}
    # The sentence before the [1] marker is the one carrying the fact.
    assert body["answer"].index("4,317") < body["answer"].index("[1]")


def test_chat_stays_ready_after_the_progress_row_is_deleted(
    http: httpx.Client, settings: Settings, instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    # What the daily cleanup does to a completed expert after COMPLETED_RETENTION_DAYS.
    keeper = make_pdf(tmp_path / "keeper.pdf", ["\n\n".join([*sample_paragraphs(3, seed=41), FACT])])
    expert_id = create_expert(settings, [keeper], name="Keeper")
    assert run_ingest(settings, expert_id, instance).success
    assert http.delete(f"/api/experts/{expert_id}/progress").status_code == 200
    assert http.get(f"/api/experts/{expert_id}/progress").status_code == 404

    response = http.post(f"/api/experts/{expert_id}/chat", json={"message": QUESTION})
    assert response.status_code == 200, response.text
    assert FACT in response.json()["answer"]
    assert [(s["filename"], s["page"]) for s in response.json()["sources"]][:1] == [("keeper.pdf", 1)]
    expert = http.get(f"/api/experts/{expert_id}").json()["expert"]
    assert expert["progress"] is None and expert["ready"] is True

    # Processing it again makes it "not ready" until that run ends, as before.
    assert http.post(f"/api/experts/{expert_id}/retry").status_code == 202
    queued = http.post(f"/api/experts/{expert_id}/chat", json={"message": QUESTION})
    assert queued.status_code == 409
    assert queued.json() == {"success": False, "error": "Keeper is not ready yet: queued, 0% done"}
    assert http.get(f"/api/experts/{expert_id}").json()["expert"]["ready"] is False


def test_an_expert_without_an_indexed_file_is_not_ready(http: httpx.Client, settings: Settings, tmp_path: Path) -> None:
    doc = tmp_path / "a.txt"
    doc.write_text("Something to read.")
    expert_id = create_expert(settings, [doc], name="Tides")
    # A completed progress row alone does not make it ready: nothing was indexed.
    with _progress(settings) as session:
        ExpertProcessingProgressService(session).mark_completed(expert_id)
    completed_but_empty = http.post(f"/api/experts/{expert_id}/chat", json={"message": "Hello?"})
    assert completed_but_empty.status_code == 409
    assert completed_but_empty.json()["error"].startswith("Tides is not ready yet")
    assert http.delete(f"/api/experts/{expert_id}/progress").status_code == 200
    gone = http.post(f"/api/experts/{expert_id}/chat", json={"message": "Hello?"})
    assert gone.status_code == 409
    assert gone.json() == {"success": False, "error": "Tides is not ready yet: not queued for processing, 0% done"}
    assert http.get(f"/api/experts/{expert_id}").json()["expert"]["ready"] is False
