"""POST /api/experts/{expert_id}/search: the ranked passages the chat would read, over real HTTP
(owner-scoped, refused until ready, validated, documented), after a real ingest."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import httpx
import pytest
from sqlalchemy.orm import Session

from expert_pipeline.core import auth
from expert_pipeline.core.settings import Settings
from tests.fixture_documents import make_pdf, sample_paragraphs
from tests.pipeline_helpers import create_expert, run_ingest
from tests.test_auth import MISSING, bearer, create, same_as_missing
from tests.test_hybrid_retrieval import CATALOGUE, TARGET


# One database leg: the ingest is what costs; the routes' database work is the chat's, tested on both.
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_search_ranks_passages_with_file_and_page_as_the_chat_retrieves_them(
    http: httpx.Client, settings: Settings, instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    # Page 1: twenty catalogue lines with neighbouring part codes; the code asked for sits deep
    # inside page 3 (the chunk holding it starts there), in a sentence about something else.
    page3 = sample_paragraphs(8, seed=52)
    page3.insert(5, TARGET)
    parts = make_pdf(
        tmp_path / "parts.pdf",
        ["\n\n".join(CATALOGUE), "\n\n".join(sample_paragraphs(5, seed=51)), "\n\n".join(page3)],
    )
    other = make_pdf(tmp_path / "other.pdf", ["\n\n".join(sample_paragraphs(6, seed=53))])
    expert_id = create_expert(settings, [parts, other], name="Parts")
    assert run_ingest(settings, expert_id, instance).success

    response = http.post(f"/api/experts/{expert_id}/search", json={"query": "XR-7731", "top_k": 3})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["success"] is True and len(body["results"]) == 3
    first = body["results"][0]
    assert set(first) == {"filename", "page", "page_end", "text", "score"}
    assert (first["filename"], first["page"]) == ("parts.pdf", 3)
    assert "XR-7731" in first["text"]
    scores = [r["score"] for r in body["results"]]
    assert scores == sorted(scores, reverse=True) and 0 < scores[-1] and scores[0] <= 1

    default = http.post(f"/api/experts/{expert_id}/search", json={"query": "  XR-7731  "}).json()["results"]
    assert len(default) == 5 and default[:3] == body["results"]  # top_k defaults to 5; query stripped

    # The chat reads the same passages: what it cites comes from the search's top 4.
    chat = http.post(f"/api/experts/{expert_id}/chat", json={"message": "Where is the seal XR-7731 kept?"})
    assert chat.status_code == 200, chat.text
    searched = http.post(
        f"/api/experts/{expert_id}/search", json={"query": "Where is the seal XR-7731 kept?", "top_k": 4}
    ).json()["results"]
    assert {(s["filename"], s["page"], s["text"]) for s in chat.json()["sources"]} <= {
        (r["filename"], r["page"], r["text"]) for r in searched
    }
    assert "XR-7731" in chat.json()["answer"]


def test_search_is_refused_until_ready_and_validates_its_body(http: httpx.Client, settings: Settings, tmp_path: Path) -> None:
    doc = tmp_path / "a.txt"
    doc.write_text("Something to read.")
    expert_id = create_expert(settings, [doc], name="Tides")
    pending = http.post(f"/api/experts/{expert_id}/search", json={"query": "tides"})
    assert pending.status_code == 409
    assert pending.json() == {"success": False, "error": "Tides is not ready yet: queued, 0% done"}
    for body in ({"query": ""}, {"query": "   "}, {}, {"query": "x" * 2001}, {"query": "x", "top_k": 0},
                 {"query": "x", "top_k": 51}, {"query": "x", "top_k": "many"}):
        response = http.post(f"/api/experts/{expert_id}/search", json=body)
        assert response.status_code == 422, body
        assert response.json()["success"] is False
    assert http.post(f"/api/experts/{expert_id}/search", json={"query": "x", "top_k": 50}).status_code == 409
    missing = http.post(f"/api/experts/{MISSING}/search", json={"query": "tides"})
    assert missing.status_code == 404
    assert missing.json() == {"success": False, "error": f"No expert '{MISSING}'"}


def test_search_is_owner_scoped(http: httpx.Client, db: Session) -> None:
    alice = auth.create_token(db, "alice")
    bob = auth.create_token(db, "bob")
    a_id = create(http, alice, "Alice's expert")
    request = {"json": {"query": "hello"}}
    theirs = http.post(f"/api/experts/{a_id}/search", headers=bearer(bob), **request)
    missing = http.post(f"/api/experts/{MISSING}/search", headers=bearer(bob), **request)
    same_as_missing(theirs, missing, a_id)
    assert http.post(f"/api/experts/{a_id}/search", headers=bearer(alice), **request).status_code == 409
    assert http.post(f"/api/experts/{a_id}/search", **request).status_code == 401


def test_openapi_documents_the_search(http: httpx.Client) -> None:
    document = http.get("/openapi.json").json()
    operation = document["paths"]["/api/experts/{expert_id}/search"]["post"]
    assert {"200", "404", "409", "422"} <= set(operation["responses"])
    schemas = document["components"]["schemas"]
    request = schemas["SearchRequest"]["properties"]
    assert request["top_k"]["minimum"] == 1 and request["top_k"]["maximum"] == 50
    assert request["query"]["minLength"] == 1
    result = schemas["SearchResult"]
    assert set(result["properties"]) == {"filename", "page", "page_end", "text", "score"}


