"""The embedded LanceDB vector store, on a temporary directory."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.vector_records import record, unit

from expert_pipeline.resources.vector_store import (
    LanceDBVectorStore,
    VectorRecord,
    VectorStore,
    table_name,
    vector_id,
)



@pytest.fixture
def store(tmp_path: Path) -> LanceDBVectorStore:
    return LanceDBVectorStore(uri=str(tmp_path / "vectors"))


def test_upsert_then_count(store: LanceDBVectorStore) -> None:
    records = [record("e1", "f1", i, unit(1, i)) for i in range(5)]
    assert store.upsert("e1", records) == 5
    assert store.count("e1") == 5


def test_reupserting_the_same_ids_replaces_instead_of_duplicating(store: LanceDBVectorStore) -> None:
    store.upsert("e1", [record("e1", "f1", i, unit(1, 0, i)) for i in range(3)])
    updated = [record("e1", "f1", i, unit(0, 1, i), text=f"new {i}") for i in range(3)]
    assert store.upsert("e1", updated) == 3
    assert store.count("e1") == 3
    (best,) = store.query("e1", unit(0, 1, 0), top_k=1)
    assert best.id == vector_id("e1", "f1", 0)
    assert best.score == pytest.approx(1.0, abs=1e-5)
    assert best.metadata["text"] == "new 0"


def test_duplicate_ids_in_one_batch_keep_the_last(store: LanceDBVectorStore) -> None:
    first = record("e1", "f1", 0, unit(1), text="first")
    last = record("e1", "f1", 0, unit(0, 1), text="last")
    assert store.upsert("e1", [first, last]) == 1
    assert store.count("e1") == 1
    assert store.query("e1", unit(0, 1))[0].metadata["text"] == "last"


def test_query_returns_the_nearest_first_with_its_metadata(store: LanceDBVectorStore) -> None:
    store.upsert("e1", [
        record("e1", "f1", 0, unit(1, 0, 0)),
        record("e1", "f1", 1, unit(0, 1, 0)),
        record("e1", "f2", 0, unit(0, 0, 1)),
    ])
    matches = store.query("e1", unit(0.1, 1, 0.2), top_k=3)
    assert [m.id for m in matches][0] == vector_id("e1", "f1", 1)
    assert len(matches) == 3
    assert [m.score for m in matches] == sorted((m.score for m in matches), reverse=True)
    expected_score = sum(a * b for a, b in zip(unit(0.1, 1, 0.2), unit(0, 1, 0)))
    assert matches[0].score == pytest.approx(expected_score, abs=1e-5)
    assert matches[0].metadata == {
        "expert_id": "e1", "file_id": "f1", "filename": "f1.pdf", "page": 2, "chunk_index": 1,
        "text": "chunk 1 of f1",
    }
    assert len(store.query("e1", unit(1), top_k=2)) == 2


def test_missing_metadata_is_left_out_rather_than_invented(store: LanceDBVectorStore) -> None:
    store.upsert("e1", [VectorRecord(id="v1", values=unit(1), metadata={"text": "only text"})])
    assert store.query("e1", unit(1))[0].metadata == {"text": "only text"}


def test_namespaces_are_isolated(store: LanceDBVectorStore) -> None:
    store.upsert("alice", [record("alice", "f", i, unit(1, i)) for i in range(2)])
    store.upsert("bob", [record("bob", "f", i, unit(1, i)) for i in range(3)])
    assert (store.count("alice"), store.count("bob")) == (2, 3)
    assert {m.metadata["expert_id"] for m in store.query("alice", unit(1), top_k=10)} == {"alice"}
    store.delete_namespace("alice")
    assert store.count("alice") == 0
    assert store.count("bob") == 3


def test_delete_ids(store: LanceDBVectorStore) -> None:
    odd_id = "it's a \"quoted\" id"  # must not need escaping by the caller
    store.upsert("e1", [record("e1", "f1", i, unit(1, i)) for i in range(4)])
    store.upsert("e1", [VectorRecord(id=odd_id, values=unit(0, 0, 1), metadata={"text": "odd"})])
    store.delete_ids("e1", [vector_id("e1", "f1", 0), vector_id("e1", "f1", 2), odd_id, "never-stored"])
    assert store.count("e1") == 2
    assert {m.id for m in store.query("e1", unit(1), top_k=10)} == {vector_id("e1", "f1", 1), vector_id("e1", "f1", 3)}
    store.delete_ids("e1", [])
    assert store.count("e1") == 2


def test_missing_namespaces_are_empty_not_errors(store: LanceDBVectorStore) -> None:
    assert store.count("nobody") == 0
    assert store.query("nobody", unit(1)) == []
    store.delete_namespace("nobody")
    store.delete_ids("nobody", ["x"])
    assert store.upsert("nobody", []) == 0
    assert store.count("nobody") == 0


def test_data_persists_for_a_new_instance(tmp_path: Path) -> None:
    uri = str(tmp_path / "vectors")
    LanceDBVectorStore(uri=uri).upsert("e1", [record("e1", "f1", 0, unit(1))])
    reopened: VectorStore = LanceDBVectorStore(uri=uri)
    assert reopened.count("e1") == 1
    assert reopened.query("e1", unit(1))[0].id == vector_id("e1", "f1", 0)


def test_writes_from_another_instance_are_seen_at_once(tmp_path: Path) -> None:
    uri = str(tmp_path / "vectors")
    reader, writer = LanceDBVectorStore(uri=uri), LanceDBVectorStore(uri=uri)
    writer.upsert("e1", [record("e1", "f1", 0, unit(1))])
    assert reader.count("e1") == 1
    writer.upsert("e1", [record("e1", "f1", 1, unit(0, 1))])
    assert reader.count("e1") == 2


def test_concurrent_writers_to_different_namespaces(tmp_path: Path) -> None:
    uri = str(tmp_path / "vectors")
    shared = LanceDBVectorStore(uri=uri)
    experts = [f"expert-{n}" for n in range(6)]

    def write(expert: str) -> int:
        # Half the writers share one instance (one connection), half bring their own.
        target = shared if expert[-1] in "024" else LanceDBVectorStore(uri=uri)
        written = 0
        for batch in range(4):
            written += target.upsert(expert, [record(expert, "f", batch * 10 + i, unit(1, i)) for i in range(10)])
        return written

    with ThreadPoolExecutor(max_workers=len(experts)) as pool:
        assert list(pool.map(write, experts)) == [40] * len(experts)
    assert [shared.count(e) for e in experts] == [40] * len(experts)


def test_rejects_inconsistent_vectors_and_unknown_metadata(store: LanceDBVectorStore) -> None:
    store.upsert("e1", [record("e1", "f1", 0, unit(1))])
    with pytest.raises(ValueError, match="8-dimensional"):
        store.upsert("e1", [VectorRecord(id="short", values=[1.0, 0.0], metadata={})])
    with pytest.raises(ValueError, match="has 2 values"):
        store.upsert("e2", [VectorRecord("a", unit(1), {}), VectorRecord("b", [1.0, 0.0], {})])
    with pytest.raises(ValueError, match="unknown metadata"):
        store.upsert("e1", [VectorRecord(id="m", values=unit(1), metadata={"colour": "red"})])
    with pytest.raises(ValueError, match="8-dimensional"):
        store.query("e1", [1.0, 0.0])
    with pytest.raises(ValueError, match="top_k"):
        store.query("e1", unit(1), top_k=0)
    assert store.count("e1") == 1
    assert store.count("e2") == 0


def test_namespace_names_are_safe_and_one_to_one(store: LanceDBVectorStore) -> None:
    uuid_like = "0b6f3c2e-8a4d-4d1e-9f3a-2c5b7e9d1a40"
    assert table_name(uuid_like) == f"expert_{uuid_like}"
    odd = ["../escape", "Gone", "gone", "a/b", "a_b", "a b", "ümlaut", "x" * 128]
    names = [table_name(n) for n in odd]
    assert len(set(names)) == len(odd)
    assert all(n.replace("_", "").replace("-", "").isalnum() and n.isascii() for n in names)
    with pytest.raises(ValueError):
        table_name("")
    for too_long in ("x" * 129, "ü" * 51):
        with pytest.raises(ValueError, match="too long"):
            table_name(too_long)
    # Odd namespaces work end to end and stay inside the store's directory.
    store.upsert("../escape", [record("x", "f", 0, unit(1))])
    store.upsert("Gone", [record("x", "f", 0, unit(1)), record("x", "f", 1, unit(0, 1))])
    assert (store.count("../escape"), store.count("Gone"), store.count("gone")) == (1, 2, 0)
    assert not (Path(store.uri).parent / "escape").exists()


def test_vector_id_is_deterministic_and_distinct() -> None:
    assert vector_id("e", "f", 3) == vector_id("e", "f", 3)
    ids = {
        vector_id("e", "f", 3), vector_id("e", "f", 4), vector_id("e", "g", 3), vector_id("d", "f", 3),
        # Separator characters inside the parts cannot make two different inputs collide.
        vector_id("e:f", "g", 3), vector_id("e", "f:g", 3), vector_id("e", "f:3", 0), vector_id("e", "f", 30),
    }
    assert len(ids) == 8
    assert all(i.isascii() for i in ids | {vector_id("ü", "f", 0)})
    assert vector_id("e", "f", 3).startswith(vector_id("e", "f", 0).rsplit(":", 1)[0] + ":")
    for bad in (-1, True):
        with pytest.raises(ValueError):
            vector_id("e", "f", bad)
