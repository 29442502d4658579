"""Embeddings cached by content hash and model, in the application database.

A retry or a re-ingest of unchanged text asks the provider only for chunks it has never seen,
so nobody pays twice for the same embedding. The cache lives in the shared database (not on
a run worker's disk), so every worker of a scaled-out deployment benefits.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import Engine, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from expert_pipeline.core.db_retry import OutageHandler, call_with_db_retry
from expert_pipeline.core.models import EmbeddingCacheEntry
from expert_pipeline.core.ports import Embedder

if TYPE_CHECKING:
    # numpy only where vectors are handled: the code server imports this module, never calls it.
    import numpy as np


def cache_key(model: str, dimensions: int, text: str) -> str:
    return hashlib.sha256(f"{model}\x00{dimensions}\x00{text}".encode()).hexdigest()


class EmbeddingCache:
    def __init__(
        self, engine: Engine, model: str, dimensions: int, on_outage_recovered: OutageHandler | None = None
    ) -> None:
        self.engine = engine
        self.model = model
        self.dimensions = dimensions
        self.on_outage_recovered = on_outage_recovered

    def keys(self, texts: Sequence[str]) -> list[str]:
        return [cache_key(self.model, self.dimensions, t) for t in texts]

    def get_many(self, keys: Sequence[str]) -> dict[str, np.ndarray]:
        if not keys:
            return {}

        def read() -> dict[str, np.ndarray]:
            import numpy as np

            with Session(self.engine) as session:
                rows = session.execute(
                    select(EmbeddingCacheEntry.key, EmbeddingCacheEntry.vector).where(
                        EmbeddingCacheEntry.key.in_(set(keys))
                    )
                )
                return {key: np.frombuffer(blob, dtype=np.float32) for key, blob in rows}

        return call_with_db_retry(read, on_recovered=self.on_outage_recovered, what="embedding cache read")

    def put_many(self, vectors: Mapping[str, np.ndarray]) -> None:
        import numpy as np

        if not vectors:
            return
        rows = [
            {"key": key, "model": self.model, "vector": np.asarray(v, dtype=np.float32).tobytes()}
            for key, v in vectors.items()
        ]
        insert = pg_insert if self.engine.dialect.name == "postgresql" else sqlite_insert
        # Two runs may embed the same text at once; the first write wins, both are identical.
        statement = insert(EmbeddingCacheEntry).values(rows).on_conflict_do_nothing(index_elements=["key"])

        def write() -> None:
            with Session(self.engine) as session:
                session.execute(statement)
                session.commit()

        # Losing these rows would only cost a re-embedding later, but they were paid for.
        call_with_db_retry(write, on_recovered=self.on_outage_recovered, what="embedding cache write")


@dataclass(frozen=True)
class Embedded:
    array: np.ndarray  # a float32 row per text, in order
    fresh: int  # how many the provider computed (the rest came from the cache)


def embed_with_cache(embedder: Embedder, cache: EmbeddingCache, texts: Sequence[str]) -> Embedded:
    """Vectors for `texts`, asking the provider only for those not cached; new ones are cached
    at once, so a run that dies mid-way has already saved what it paid for."""
    import numpy as np

    keys = cache.keys(texts)
    known = cache.get_many(keys)
    missing = [i for i, key in enumerate(keys) if key not in known]
    if missing:
        fresh = np.asarray(embedder.embed([texts[i] for i in missing]), dtype=np.float32)
        new = {keys[i]: fresh[j] for j, i in enumerate(missing)}
        cache.put_many(new)
        known.update(new)
    return Embedded(np.stack([known[key] for key in keys]).astype(np.float32), len(missing))
