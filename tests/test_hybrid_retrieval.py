"""Hybrid retrieval (expert_pipeline.retrieval): keyword ranking fused with the vectors finds
exact terms (part codes, names, German words) that vector search alone ranks too low, on both
stores, with the real local embedding model."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import lancedb
import pyarrow as pa
import pytest

from expert_pipeline import retrieval
from expert_pipeline.adapters.embedder import LocalEmbedder
from expert_pipeline.adapters.pinecone_vector_store import PineconeVectorStore
from expert_pipeline.adapters.vector_store import LanceDBVectorStore, VectorRecord, table_name
from expert_pipeline.core.ports import VectorStore
from expert_pipeline.retrieval.fusion import reciprocal_rank_fusion
from tests.pinecone_standin import API_KEY, PineconeStandin

# Twenty near-identical catalogue lines with neighbouring part codes, and one passage that holds
# the code asked for in an unrelated sentence: the embedding of "XR-7731" is close to all of them.
ENGINES = ["V6", "V8", "inline four", "diesel", "marine"]
CATALOGUE = [
    f"Part XR-{7700 + i} is a coolant pump housing gasket for the {engine} engine series; "
    f"replace it during the {hours}-hour service."
    for i, (engine, hours) in enumerate((e, h) for e in ENGINES for h in (500, 1000, 2000, 4000))
]
TARGET = "The spare kit we keep on shelf B holds the seal XR-7731, ordered from Hamburg in March."
GERMAN = "Die Kühlmittelpumpe muss nach 4000 Betriebsstunden getauscht werden."
LIGATURE_FREE = "Definition of the service interval: the hours between two inspections."
TEXTS = [*CATALOGUE, TARGET, GERMAN, LIGATURE_FREE]


@pytest.fixture(scope="module")
def embedder() -> LocalEmbedder:
    model = LocalEmbedder()
    model.warm_up()
    return model


@pytest.fixture(scope="module")
def vectors(embedder: LocalEmbedder) -> list[list[float]]:
    return embedder.embed(TEXTS)


@pytest.fixture(params=["lancedb", "pinecone"])
def store(request: pytest.FixtureRequest, tmp_path: Path, vectors: list[list[float]]) -> Iterator[VectorStore]:
    records = [
        VectorRecord(
            id=f"parts:{i}",
            values=v,
            metadata={"filename": "parts.pdf", "page": i + 1, "chunk_index": i, "text": t},
        )
        for i, (t, v) in enumerate(zip(TEXTS, vectors, strict=True))
    ]
    if request.param == "lancedb":
        lance = LanceDBVectorStore(uri=str(tmp_path / "vectors"))
        lance.upsert("e1", records)
        yield lance
        return
    with PineconeStandin(dimension=None) as server:
        pinecone = PineconeVectorStore(api_key=API_KEY, index_host=server.url)
        pinecone.upsert("e1", records)
        yield pinecone
        pinecone.close()


def rank_of(passages: list[retrieval.Passage], text: str) -> int | None:
    ranks = [i for i, p in enumerate(passages, 1) if p.metadata["text"] == text]
    return ranks[0] if ranks else None


def test_an_exact_part_number_that_vectors_miss_is_found_by_hybrid(
    store: VectorStore, embedder: LocalEmbedder
) -> None:
    vector_only = retrieval.search(embedder, store, "e1", "XR-7731", top_k=len(TEXTS), mode="vector")
    vector_rank = rank_of(vector_only, TARGET)
    assert vector_rank is not None and vector_rank > 5  # the gap hybrid retrieval closes

    hybrid = retrieval.search(embedder, store, "e1", "XR-7731", top_k=5)
    assert rank_of(hybrid, TARGET) == 1
    best = hybrid[0]
    assert (best.keyword_rank, best.vector_rank) == (1, vector_rank)
    assert best.metadata == {"filename": "parts.pdf", "page": 21, "chunk_index": 20, "text": TARGET}
    assert [p.score for p in hybrid] == sorted((p.score for p in hybrid), reverse=True)
    assert 0 < hybrid[-1].score and hybrid[0].score <= 1
    # The vector side still counts: the rest of the top 5 are the nearest catalogue lines.
    assert [p.id for p in hybrid[1:]] == [p.id for p in vector_only if p.metadata["text"] != TARGET][:4]


def test_german_words_and_ligatures_are_found(store: VectorStore, embedder: LocalEmbedder) -> None:
    # Accents and case do not matter to the keyword side; a pasted "ﬁ" ligature is normalised.
    for query in ("Kühlmittelpumpe", "kuhlmittelpumpe", "KÜHLMITTELPUMPE getauscht"):
        assert retrieval.search(embedder, store, "e1", query, top_k=3)[0].metadata["text"] == GERMAN, query
    assert retrieval.search(embedder, store, "e1", "Deﬁnition", top_k=3)[0].metadata["text"] == LIGATURE_FREE


def test_modes_and_empty_questions(store: VectorStore, embedder: LocalEmbedder) -> None:
    assert retrieval.search(embedder, store, "e1", "   ") == []
    assert retrieval.search(embedder, store, "nobody", "XR-7731") == []
    keyword = retrieval.search(embedder, store, "e1", "XR-7731", top_k=5, mode="keyword")
    assert [p.metadata["text"] for p in keyword] == [TARGET]  # the catalogue shares only "XR"
    assert keyword[0].score == 1.0
    vector = retrieval.search(embedder, store, "e1", "coolant pump gasket", top_k=3, mode="vector")
    assert len(vector) == 3 and all(p.vector_rank for p in vector) and 0 < vector[0].score <= 1
    with pytest.raises(ValueError, match="top_k"):
        retrieval.search(embedder, store, "e1", "XR-7731", top_k=0)


def test_reciprocal_rank_fusion() -> None:
    fused = reciprocal_rank_fusion([["a", "b", "c"], ["c", "a"]], k=60)
    assert sorted(fused, key=fused.__getitem__, reverse=True) == ["a", "c", "b"]
    assert fused["a"] == pytest.approx(1 / 61 + 1 / 62)
    assert reciprocal_rank_fusion([["a", "a"]], k=0) == {"a": 1.0}  # a repeat counts once


def test_a_table_written_before_page_end_keeps_working(tmp_path: Path) -> None:
    old_schema = pa.schema(
        [
            pa.field("id", pa.string(), nullable=False),
            pa.field("vector", pa.list_(pa.float32(), 2), nullable=False),
            *(pa.field(name, pa.string()) for name in ("expert_id", "file_id", "filename")),
            pa.field("page", pa.int64()),
            pa.field("chunk_index", pa.int64()),
            pa.field("text", pa.string()),
        ]
    )
    old = pa.table(
        {
            "id": ["old"], "vector": pa.FixedSizeListArray.from_arrays(pa.array([1.0, 0.0], pa.float32()), 2),
            "expert_id": ["e1"], "file_id": ["f"], "filename": ["a.pdf"], "page": [1], "chunk_index": [0],
            "text": ["an older chunk about turbines"],
        },
        schema=old_schema,
    )
    lancedb.connect(str(tmp_path)).create_table(table_name("e1"), old)
    store = LanceDBVectorStore(uri=str(tmp_path))
    assert store.keyword_query("e1", "turbines")[0].metadata["page"] == 1  # read before any write
    assert store.query("e1", [1.0, 0.0])[0].id == "old"
    store.upsert("e1", [VectorRecord("new", [0.0, 1.0], {"page": 2, "page_end": 3, "text": "turbines again"})])
    found = {m.id: m.metadata for m in store.keyword_query("e1", "turbines")}
    assert found["new"] == {"page": 2, "page_end": 3, "text": "turbines again"}
    assert "page_end" not in found["old"]
