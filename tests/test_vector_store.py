"""The embedded LanceDB vector store, on a temporary directory: what only LanceDB has (files
shared between instances and writers, table names, its schema). The behaviour every store shares
is in test_vector_store_contract.py, run on LanceDB and Pinecone alike."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.vector_records import record, unit

from expert_pipeline.adapters.vector_store import (
    LanceDBVectorStore,
    VectorRecord,
    VectorStore,
    table_name,
    vector_id,
)


@pytest.fixture
def store(tmp_path: Path) -> LanceDBVectorStore:
    return LanceDBVectorStore(uri=str(tmp_path / "vectors"))


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


def test_rejects_vectors_of_another_dimension_and_unknown_metadata(store: LanceDBVectorStore) -> None:
    store.upsert("e1", [record("e1", "f1", 0, unit(1))])
    with pytest.raises(ValueError, match="8-dimensional"):
        store.upsert("e1", [VectorRecord(id="short", values=[1.0, 0.0], metadata={})])
    with pytest.raises(ValueError, match="unknown metadata"):
        store.upsert("e1", [VectorRecord(id="m", values=unit(1), metadata={"colour": "red"})])
    with pytest.raises(ValueError, match="8-dimensional"):
        store.query("e1", [1.0, 0.0])
    assert store.count("e1") == 1


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
