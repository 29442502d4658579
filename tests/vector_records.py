"""Small vectors and records for the vector-store tests (LanceDB and Pinecone alike)."""

from __future__ import annotations

import math

from expert_pipeline.adapters.vector_store import VectorRecord, vector_id

DIMENSION = 8


def unit(*components: float, dim: int = DIMENSION) -> list[float]:
    values = list(components) + [0.0] * (dim - len(components))
    norm = math.sqrt(sum(v * v for v in values))
    return [v / norm for v in values]


def record(expert: str, file: str, index: int, values: list[float], text: str = "") -> VectorRecord:
    return VectorRecord(
        id=vector_id(expert, file, index),
        values=values,
        metadata={
            "expert_id": expert, "file_id": file, "filename": f"{file}.pdf", "page": index + 1,
            "chunk_index": index, "text": text or f"chunk {index} of {file}",
        },
    )
