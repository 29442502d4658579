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
