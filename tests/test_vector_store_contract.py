"""The vector-store contract: what the pipeline, the API and the cleanup rely on from any backend.

Every test runs on both stores: embedded LanceDB (a temporary directory) and Pinecone (the real
SDK over real HTTP, against the local stand-in). What only one backend has stays with it:
LanceDB's files, table names and concurrent writers in test_vector_store.py; what is sent to
Pinecone (headers, request sizes, retries, limits) in test_pinecone_vector_store.py.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from expert_pipeline.adapters.vector_store import LanceDBVectorStore, VectorRecord, VectorStore, vector_id
from tests.vector_records import record, unit


@pytest.fixture(params=["lancedb", "pinecone"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> VectorStore:
    if request.param == "lancedb":
        return LanceDBVectorStore(uri=str(tmp_path / "vectors"))
    pinecone: VectorStore = request.getfixturevalue("pinecone_store")  # satisfies the protocol
    return pinecone


def many(expert: str, n: int) -> list[VectorRecord]:
    return [record(expert, "f", i, unit(1, (i % 97) / 97, (i % 13) / 13)) for i in range(n)]


# ---- writes and counts --------------------------------------------------------------------------


def test_upsert_then_count(store: VectorStore) -> None:
    assert store.upsert("e1", [record("e1", "f1", i, unit(1, i)) for i in range(5)]) == 5
    assert store.count("e1") == 5
    assert store.count("nobody") == 0


def test_a_large_upsert_is_stored_whole(store: VectorStore) -> None:
    records = many("e1", 2500)  # more than one Pinecone request takes
    assert store.upsert("e1", records) == 2500
    assert store.count("e1") == 2500
    assert store.upsert("e1", records) == 2500  # writing again replaces
    assert store.count("e1") == 2500


def test_reupserting_the_same_ids_replaces_instead_of_duplicating(store: VectorStore) -> None:
    store.upsert("e1", [record("e1", "f1", i, unit(1, 0, i)) for i in range(3)])
    updated = [record("e1", "f1", i, unit(0, 1, i), text=f"new {i}") for i in range(3)]
    assert store.upsert("e1", updated) == 3
    assert store.count("e1") == 3
    (best,) = store.query("e1", unit(0, 1, 0), top_k=1)
    assert best.id == vector_id("e1", "f1", 0)
    assert best.score == pytest.approx(1.0, abs=1e-5)
    assert best.metadata["text"] == "new 0"


def test_duplicate_ids_in_one_batch_keep_the_last(store: VectorStore) -> None:
    first = record("e1", "f1", 0, unit(1), text="first")
    last = record("e1", "f1", 0, unit(0, 1), text="last")
    assert store.upsert("e1", [first, last]) == 1
    assert store.count("e1") == 1
    assert store.query("e1", unit(0, 1))[0].metadata["text"] == "last"


# ---- queries ------------------------------------------------------------------------------------


def test_query_returns_the_nearest_first_with_its_metadata(store: VectorStore) -> None:
    store.upsert("e1", [
        record("e1", "f1", 0, unit(1, 0, 0)),
        record("e1", "f1", 1, unit(0, 1, 0)),
        record("e1", "f2", 0, unit(0, 0, 1)),
    ])
    query = unit(0.1, 1, 0.2)
    matches = store.query("e1", query, top_k=3)
    assert [m.id for m in matches] == [vector_id("e1", "f1", 1), vector_id("e1", "f2", 0), vector_id("e1", "f1", 0)]
    assert [m.score for m in matches] == sorted((m.score for m in matches), reverse=True)
    assert matches[0].score > matches[1].score > matches[2].score
    assert matches[0].score == pytest.approx(sum(a * b for a, b in zip(query, unit(0, 1, 0))), abs=1e-5)
    assert matches[0].metadata == {
        "expert_id": "e1", "file_id": "f1", "filename": "f1.pdf", "page": 2, "chunk_index": 1,
        "text": "chunk 1 of f1",
    }
    # Numbers come back as they were written (Pinecone stores them as floats; the store converts).
    assert type(matches[0].metadata["page"]) is int and type(matches[0].metadata["chunk_index"]) is int
    assert [m.id for m in store.query("e1", query, top_k=2)] == [m.id for m in matches[:2]]
    assert len(store.query("e1", unit(1))) == 3  # top_k is a limit, not a promise


def test_missing_metadata_is_left_out_rather_than_invented(store: VectorStore) -> None:
    store.upsert("e1", [VectorRecord(id="v1", values=unit(1), metadata={"text": "only text"})])
    assert store.query("e1", unit(1))[0].metadata == {"text": "only text"}


# ---- namespaces ---------------------------------------------------------------------------------


def test_namespaces_are_isolated(store: VectorStore) -> None:
    store.upsert("alice", [record("alice", "f", i, unit(1, i)) for i in range(2)])
    store.upsert("bob", [record("bob", "f", i, unit(1, i)) for i in range(3)])
    assert (store.count("alice"), store.count("bob")) == (2, 3)
    assert {m.metadata["expert_id"] for m in store.query("alice", unit(1), top_k=10)} == {"alice"}
    store.delete_namespace("alice")
    assert store.count("alice") == 0
    assert store.query("alice", unit(1)) == []
    assert store.count("bob") == 3


def test_list_namespaces_names_every_namespace_holding_records(store: VectorStore) -> None:
    assert store.list_namespaces() == []
    for name, n in (("carol", 1), ("alice", 2), ("bob", 3)):
        store.upsert(name, [record(name, "f", i, unit(1, i)) for i in range(n)])
    assert store.list_namespaces() == ["alice", "bob", "carol"]
    store.delete_namespace("bob")
    assert store.list_namespaces() == ["alice", "carol"]


def test_missing_namespaces_are_empty_not_errors(store: VectorStore) -> None:
    assert store.count("nobody") == 0
    assert store.query("nobody", unit(1)) == []
    assert store.modified_at("nobody") is None
    store.delete_namespace("nobody")
    store.delete_ids("nobody", ["x"])
    assert store.upsert("nobody", []) == 0
    assert store.count("nobody") == 0
    # Deleting a namespace twice is as good as once.
    store.upsert("e1", [record("e1", "f1", i, unit(1, i)) for i in range(3)])
    store.delete_namespace("e1")
    assert store.count("e1") == 0
    store.delete_namespace("e1")
    assert store.count("e1") == 0


def test_modified_at_is_a_recent_utc_time_or_unknown(store: VectorStore) -> None:
    store.upsert("e1", [record("e1", "f1", 0, unit(1))])
    stamp = store.modified_at("e1")  # LanceDB knows; Pinecone keeps no write time (None)
    if stamp is not None:
        assert stamp.tzinfo is not None
        assert abs(datetime.now(UTC) - stamp) < timedelta(minutes=5)


# ---- deletes ------------------------------------------------------------------------------------


def test_delete_ids(store: VectorStore) -> None:
    odd_id = "it's a \"quoted\" id"  # must not need escaping by the caller
    store.upsert("e1", [record("e1", "f1", i, unit(1, i)) for i in range(4)])
    store.upsert("e1", [VectorRecord(id=odd_id, values=unit(0, 0, 1), metadata={"text": "odd"})])
    store.delete_ids("e1", [vector_id("e1", "f1", 0), vector_id("e1", "f1", 2), odd_id, "never-stored"])
    assert store.count("e1") == 2
    assert {m.id for m in store.query("e1", unit(1), top_k=10)} == {vector_id("e1", "f1", 1), vector_id("e1", "f1", 3)}
    store.delete_ids("e1", [])
    assert store.count("e1") == 2


def test_deleting_thousands_of_ids_at_once(store: VectorStore) -> None:
    records = many("e1", 2600)
    store.upsert("e1", records)
    keep = {r.id for r in records[2500:]}
    store.delete_ids("e1", [r.id for r in records[:2500]] + [records[0].id])  # one repeated
    assert store.count("e1") == 100
    assert {m.id for m in store.query("e1", unit(1), top_k=200)} == keep


# ---- input the store refuses --------------------------------------------------------------------


def test_inconsistent_vectors_and_a_bad_top_k_are_refused_without_a_write(store: VectorStore) -> None:
    with pytest.raises(ValueError, match="has 2 values"):
        store.upsert("e2", [VectorRecord("a", unit(1), {}), VectorRecord("b", [1.0, 0.0], {})])
    assert store.count("e2") == 0
    store.upsert("e1", [record("e1", "f1", 0, unit(1))])
    with pytest.raises(ValueError, match="top_k"):
        store.query("e1", unit(1), top_k=0)
    assert store.count("e1") == 1


# ---- keyword search -----------------------------------------------------------------------------


def texts(expert: str, *chunks: str) -> list[VectorRecord]:
    # All vectors alike, so only the words can tell the records apart.
    return [record(expert, "f", i, unit(1, 0.01 * i), text=t) for i, t in enumerate(chunks)]


def test_keyword_query_finds_exact_terms_best_first_with_metadata(store: VectorStore) -> None:
    store.upsert("e1", texts(
        "e1",
        "The coolant pump XR-7730 is mounted on the left side.",
        "Replace the coolant pump XR-7731 every 4,000 hours; the XR-7731 seal wears first.",
        "The Kühlmittelpumpe fördert das Kühlmittel durch den Motorblock.",
        "Nothing about pumps here, only the weather in Tallinn.",
    ))
    matches = store.keyword_query("e1", "XR-7731", top_k=3)
    assert matches[0].id == vector_id("e1", "f", 1)
    assert matches[0].metadata == {
        "expert_id": "e1", "file_id": "f", "filename": "f.pdf", "page": 2, "chunk_index": 1,
        "text": "Replace the coolant pump XR-7731 every 4,000 hours; the XR-7731 seal wears first.",
    }
    assert type(matches[0].metadata["page"]) is int
    assert [m.score for m in matches] == sorted((m.score for m in matches), reverse=True)
    assert matches[0].score > 0
    assert vector_id("e1", "f", 3) not in {m.id for m in matches}  # shares no word
    # Case and accents do not matter; a word no record holds finds nothing.
    for query in ("kühlmittelpumpe", "KUHLMITTELPUMPE", "Kühlmittelpumpe?"):
        assert [m.id for m in store.keyword_query("e1", query)] == [vector_id("e1", "f", 2)], query
    assert store.keyword_query("e1", "zeppelin") == []
    assert store.keyword_query("e1", "   ") == []
    assert len(store.keyword_query("e1", "pump coolant XR", top_k=1)) == 1
    # all_words: only records holding every word of the query.
    assert [m.id for m in store.keyword_query("e1", "XR-7731", all_words=True)] == [vector_id("e1", "f", 1)]
    both = store.keyword_query("e1", "coolant pump", all_words=True, top_k=5)
    assert {m.id for m in both} == {vector_id("e1", "f", 0), vector_id("e1", "f", 1)}
    assert store.keyword_query("e1", "coolant zeppelin", all_words=True) == []


def test_keyword_query_takes_user_text_literally(store: VectorStore) -> None:
    store.upsert("e1", texts("e1", 'He said "stop" (twice) AND left.', "An unrelated line."))
    for query in ('"stop" AND (', "OR NOT -", "text:*", "stop)"):
        found = store.keyword_query("e1", query)  # never a query-syntax error
        assert {m.id for m in found} <= {vector_id("e1", "f", 0)}, query
    assert store.keyword_query("e1", '"stop" AND (')[0].id == vector_id("e1", "f", 0)


def test_keyword_query_follows_writes_and_namespaces(store: VectorStore) -> None:
    assert store.keyword_query("nobody", "anything") == []
    store.upsert("e1", texts("e1", "alpha bravo", "charlie delta"))
    store.upsert("e2", texts("e2", "alpha echo"))
    assert [m.id for m in store.keyword_query("e1", "alpha")] == [vector_id("e1", "f", 0)]
    assert store.keyword_query("e1", "echo") == []
    # Replaced text, added records and deleted ids show at once.
    store.upsert("e1", texts("e1", "foxtrot golf"))
    assert store.keyword_query("e1", "alpha") == []
    assert [m.id for m in store.keyword_query("e1", "foxtrot")] == [vector_id("e1", "f", 0)]
    store.upsert("e1", [record("e1", "g", 0, unit(1), text="alpha again")])
    assert [m.id for m in store.keyword_query("e1", "alpha")] == [vector_id("e1", "g", 0)]
    store.delete_ids("e1", [vector_id("e1", "g", 0)])
    assert store.keyword_query("e1", "alpha") == []
    store.delete_namespace("e2")
    assert store.keyword_query("e2", "alpha") == []
    with pytest.raises(ValueError, match="top_k"):
        store.keyword_query("e1", "alpha", top_k=0)


def test_keyword_query_over_many_records(store: VectorStore) -> None:
    # More records than one Pinecone list page or fetch, and than LanceDB leaves unindexed.
    records = [
        record("e1", "f", i, unit(1, (i % 97) / 97), text=f"routine maintenance note {i} for pump unit P-{i}")
        for i in range(700)
    ]
    for start in range(0, 700, 64):  # in batches, as the pipeline writes
        store.upsert("e1", records[start : start + 64])
    found = store.keyword_query("e1", "P-613", top_k=5)
    assert found[0].id == vector_id("e1", "f", 613)
    assert len(store.keyword_query("e1", "maintenance", top_k=50)) == 50


def test_a_chunk_spanning_pages_keeps_its_last_page(store: VectorStore) -> None:
    spanning = VectorRecord(
        id="v1", values=unit(1), metadata={"filename": "a.pdf", "page": 3, "page_end": 4, "text": "across pages"}
    )
    store.upsert("e1", [spanning, record("e1", "f", 0, unit(0, 1))])
    (match,) = store.keyword_query("e1", "across")
    assert match.metadata == {"filename": "a.pdf", "page": 3, "page_end": 4, "text": "across pages"}
    assert type(match.metadata["page_end"]) is int
    assert "page_end" not in store.query("e1", unit(0, 1), top_k=1)[0].metadata
