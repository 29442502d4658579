"""An expert's working files between stages: fetched copies, page text, chunks, embeddings.

Stages hand data to each other through these files rather than through memory, so a long
document streams through in batches and a re-run can pick up what earlier stages produced.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from expert_pipeline.text.chunking import Chunk
from expert_pipeline.text.extraction import PageText

if TYPE_CHECKING:
    # numpy is imported where embeddings are handled: the extraction worker process imports
    # this module for `write_pages`, and numpy's BLAS buffers alone would take ~120 MB of its
    # capped address space.
    import numpy as np


class ExpertWorkArea:
    def __init__(self, root: Path, expert_id: str) -> None:
        self.dir = Path(root) / expert_id

    def fetched_path(self, file_id: str, filename: str) -> Path:
        return self.dir / "files" / file_id / filename

    def text_path(self, file_id: str) -> Path:
        return self.dir / "text" / f"{file_id}.jsonl"

    def chunks_path(self, file_id: str) -> Path:
        return self.dir / "chunks" / f"{file_id}.jsonl"

    def embeddings_path(self, file_id: str) -> Path:
        return self.dir / "embeddings" / f"{file_id}.f32"

    def write_pages(self, file_id: str, pages: Iterable[PageText]) -> tuple[int, int]:
        """Stream pages to disk; returns (pages, characters)."""
        return _write_jsonl(
            self.text_path(file_id), ({"page": p.page, "text": p.text} for p in pages), "text"
        )

    def read_pages(self, file_id: str) -> Iterator[PageText]:
        for row in _read_jsonl(self.text_path(file_id)):
            yield page_from_row(row)

    def write_chunks(self, file_id: str, chunks: Iterable[Chunk]) -> tuple[int, int]:
        """Stream chunks to disk; returns (chunks, tokens)."""
        return _write_jsonl(self.chunks_path(file_id), (asdict(c) for c in chunks), "token_count")

    def read_chunks(self, file_id: str) -> Iterator[Chunk]:
        for row in _read_jsonl(self.chunks_path(file_id)):
            yield Chunk(**row)  # written by write_chunks from the same dataclass

    def count_chunks(self, file_id: str) -> int:
        path = self.chunks_path(file_id)
        if not path.exists():
            return 0
        with open(path, "rb") as handle:
            return sum(1 for _ in handle)

    def start_embeddings(self, file_id: str) -> Path:
        path = self.embeddings_path(file_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
        return path

    def append_embeddings(self, file_id: str, vectors: np.ndarray) -> None:
        import numpy as np

        with open(self.embeddings_path(file_id), "ab") as handle:
            np.asarray(vectors, dtype=np.float32).tofile(handle)

    def read_embeddings(self, file_id: str, dimensions: int) -> np.ndarray:
        """A memory map: rows are paged in as they are read, not loaded at once."""
        import numpy as np

        path = self.embeddings_path(file_id)
        if path.stat().st_size == 0:
            return np.zeros((0, dimensions), dtype=np.float32)
        return np.memmap(path, dtype=np.float32, mode="r").reshape(-1, dimensions)

    def write_note(self, name: str, data: dict[str, Any]) -> None:
        """A small fact for a later step of the same run (e.g. an open provider-trouble episode)."""
        path = self.dir / "notes" / f"{name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data))

    def read_note(self, name: str) -> dict[str, Any] | None:
        path = self.dir / "notes" / f"{name}.json"
        return json.loads(path.read_text()) if path.exists() else None

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def remove_expert(self) -> None:
        """Remove every run's work area of this expert (this one is `<work>/<expert>/<run>`)."""
        shutil.rmtree(self.dir.parent, ignore_errors=True)


def page_from_row(row: dict[str, Any]) -> PageText:
    """A page as `write_pages` stored it."""
    return PageText(page=int(row["page"]), text=str(row["text"]))


def _write_jsonl(path: Path, rows: Iterable[dict[str, Any]], measure: str) -> tuple[int, int]:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(path.suffix + ".partial")
    count = total = 0
    try:
        with open(partial, "w", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
                count += 1
                value = row[measure]
                total += len(value) if isinstance(value, str) else int(value)
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)
    return count, total


def _read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            yield json.loads(line)
