"""Where uploaded files live: a local directory by default (S3 in production)."""

from __future__ import annotations

import hashlib
import os
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from pydantic import BaseModel

from expert_pipeline.core.ports import FileMissing, FileStorage, FileTooLarge, StoredFile

__all__ = ["FileMissing", "FileStorage", "FileTooLarge", "LocalFileStorage", "StoredFile"]


_CHUNK = 1024 * 1024


class LocalFileStorage(BaseModel):
    """Files under a local directory; keys are relative paths below it."""

    root: str

    def _path(self, key: str) -> Path:
        root = Path(self.root).resolve()
        path = (root / key).resolve()
        # Keys are built by us from sanitised names, but a storage layer must never write
        # outside its root whatever it is handed.
        if root not in path.parents:
            raise ValueError(f"storage key escapes the storage root: {key!r}")
        return path

    def save(self, key: str, stream: BinaryIO, max_bytes: int | None = None) -> StoredFile:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        digest, size = hashlib.sha256(), 0
        try:
            with open(partial, "wb") as out:
                while block := stream.read(_CHUNK):
                    size += len(block)
                    if max_bytes is not None and size > max_bytes:
                        raise FileTooLarge(max_bytes)
                    digest.update(block)
                    out.write(block)
            os.replace(partial, path)
        finally:
            partial.unlink(missing_ok=True)
        return StoredFile(key=key, size_bytes=size, sha256=digest.hexdigest())

    def fetch(self, key: str, destination: Path) -> int:
        source = self._path(key)
        if not source.is_file():
            raise FileMissing(f"stored file is missing: {key}")
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, destination)
        return source.stat().st_size

    def take_trouble(self) -> dict[int, int]:
        return {}  # a local folder has no one to retry

    def delete_prefix(self, prefix: str) -> int:
        path = self._path(prefix.rstrip("/"))
        if not path.exists():
            return 0
        count = sum(1 for p in path.rglob("*") if p.is_file())
        shutil.rmtree(path)
        return count

    def list_folders(self, prefix: str) -> list[str]:
        path = self._path(prefix.rstrip("/"))
        if not path.is_dir():
            return []
        return sorted(entry.name for entry in path.iterdir() if entry.is_dir())

    def modified_at(self, prefix: str) -> datetime | None:
        path = self._path(prefix.rstrip("/"))
        if not path.exists():
            return None
        # Directories count too: an upload creates its folder before the first byte is written.
        newest = path.stat().st_mtime
        for entry in path.rglob("*"):
            try:
                newest = max(newest, entry.stat().st_mtime)
            except FileNotFoundError:  # removed while we walk (a failed upload cleaning up)
                continue
        return datetime.fromtimestamp(newest, UTC)
