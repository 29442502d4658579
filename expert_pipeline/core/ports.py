"""The interfaces the pipeline and the API need from the outside world, declared once: where
uploaded files live, how text becomes vectors, where vectors live. Implementations (local and
cloud) are in `expert_pipeline/adapters/`; Dagster resources in `expert_pipeline/resources/`
wrap them. No Dagster, no SDK imports here."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import BinaryIO, NamedTuple, Protocol
from urllib.parse import quote

# -- file storage ------------------------------------------------------------------------------


class StoredFile(NamedTuple):
    key: str
    size_bytes: int
    sha256: str


class FileTooLarge(ValueError):
    def __init__(self, limit: int) -> None:
        super().__init__(f"file is larger than the limit of {limit} bytes")
        self.limit = limit


class FileMissing(FileNotFoundError):
    pass


class FileStorage(Protocol):
    def save(self, key: str, stream: BinaryIO, max_bytes: int | None = None) -> StoredFile: ...
    def fetch(self, key: str, destination: Path) -> int: ...
    def delete_prefix(self, prefix: str) -> int: ...
    def list_folders(self, prefix: str) -> list[str]:
        """The names of the "folders" directly below `prefix` (e.g. expert ids under "experts/")."""
        ...

    def modified_at(self, prefix: str) -> datetime | None:
        """When anything below the folder `prefix` last changed (UTC); None if nothing is there."""
        ...

    def take_trouble(self) -> dict[int, int]:
        """Answers a remote store gave that its SDK retried (status -> count) since the last call."""
        ...


# -- embeddings --------------------------------------------------------------------------------


class Embedder(Protocol):
    """What the pipeline needs from an embedding model."""

    @property
    def model_name(self) -> str: ...

    @property
    def dimensions(self) -> int: ...

    @property
    def max_input_tokens(self) -> int:
        """Tokens the model reads; anything longer is cut off, so chunks must stay below it."""
        ...

    def count_tokens(self, text: str) -> int:
        """Tokens `text` costs, counted exactly as the model counts them."""
        ...

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """One L2-normalised vector per text, in the same order."""
        ...

    def warm_up(self) -> float:
        """Get ready (load a model, open a client); returns the seconds it took."""
        ...

    def take_trouble(self) -> dict[int, int]:
        """Answers a remote provider gave that were retried (HTTP status -> count) since the
        last call; always empty for a local model."""
        ...


# -- vector store ------------------------------------------------------------------------------

MetadataValue = str | int | float


def vector_id(expert_id: str, file_id: str, chunk_index: int) -> str:
    """The id of a chunk's vector: the same inputs always give the same id.

    Readable and prefix-ordered ("<expert>:<file>:<chunk>") so every vector of one file can be
    found by id prefix (Pinecone can list ids by prefix but cannot delete by metadata on
    serverless indexes). The parts are percent-encoded, which escapes ":" and "%", so
    different inputs can never produce the same id and the id is plain ASCII.
    """
    if isinstance(chunk_index, bool) or not isinstance(chunk_index, int) or chunk_index < 0:
        raise ValueError(f"chunk_index must be a non-negative integer, not {chunk_index!r}")
    if not expert_id or not file_id:
        raise ValueError("expert_id and file_id must not be empty")
    return f"{quote(expert_id, safe='')}:{quote(file_id, safe='')}:{chunk_index}"


@dataclass(frozen=True)
class VectorRecord:
    id: str
    values: list[float]
    metadata: dict[str, MetadataValue]


@dataclass(frozen=True)
class VectorMatch:
    id: str
    score: float
    """Cosine similarity: 1 for the same direction, higher is closer."""
    metadata: dict[str, MetadataValue]


class VectorStore(Protocol):
    def upsert(self, namespace: str, records: Sequence[VectorRecord]) -> int:
        """Insert or replace records by id; the number of records written."""
        ...

    def count(self, namespace: str) -> int: ...

    def query(self, namespace: str, vector: Sequence[float], top_k: int = 5) -> list[VectorMatch]:
        """The `top_k` nearest records by cosine similarity, best first."""
        ...

    def keyword_query(
        self, namespace: str, text: str, top_k: int = 5, all_words: bool = False
    ) -> list[VectorMatch]:
        """The `top_k` records whose stored `text` best matches the words of `text` (BM25
        full-text ranking, case- and accent-insensitive), best first; the score is the
        store's keyword relevance (higher is better, not comparable across stores). Records
        sharing no word with `text` (with `all_words`: lacking any of them) are left out, so
        the list may be empty."""
        ...

    def delete_namespace(self, namespace: str) -> None: ...

    def delete_ids(self, namespace: str, ids: Sequence[str]) -> None: ...

    def list_namespaces(self) -> list[str]:
        """Every namespace this store holds (for the cleanup of ones no expert owns)."""
        ...

    def modified_at(self, namespace: str) -> datetime | None:
        """When `namespace` was last written (UTC); None if the store cannot tell or it is gone."""
        ...
