"""Creating, listing and deleting experts with their files (no Dagster import).

Creating an expert stores its files first and then writes the expert, its file rows and its
`pending` progress row in one transaction; if that fails, the stored files are removed, so
nothing is half-created. The pipeline's sensor picks the pending row up and starts the run.
"""

from __future__ import annotations

import re
import unicodedata
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any, BinaryIO

from sqlalchemy import select
from sqlalchemy.orm import Session

from expert_pipeline.core.models import (
    ACTIVE_STATUSES,
    Expert,
    ExpertFile,
    ExpertProcessingProgress,
    FileStatus,
)
from expert_pipeline.core.ports import FileStorage
from expert_pipeline.core.progress_service import ExpertProcessingProgressService

MAX_FILENAME_CHARS = 180
# Filesystems cap a name at 255 bytes, not characters (180 "é" are 360 bytes); leave room
# for the ".partial" suffix used while a file is being written.
MAX_FILENAME_BYTES = 200

# Control characters, and the invisible marks that reorder text on screen: with them,
# "invoice\u202etxt.pdf" is shown as "invoicefdp.txt".
_UNSAFE_NAME_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f/\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
# The same set without "/", refused (not stripped) in an expert's name and agent_id: NUL breaks
# PostgreSQL text, the rest make a name print or display as something else.
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_BIDI_CHARS = re.compile(r"[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


class UploadRejected(ValueError):
    """The request cannot be accepted; `status_code` is the HTTP status that says why."""

    def __init__(self, message: str, status_code: int = 400) -> None:
        super().__init__(message)
        self.status_code = status_code


@dataclass(frozen=True)
class Upload:
    filename: str
    stream: BinaryIO


@dataclass(frozen=True)
class UploadLimits:
    max_files: int
    max_file_bytes: int
    max_total_bytes: int
    allowed_extensions: frozenset[str]


def expert_prefix(expert_id: str) -> str:
    return f"experts/{expert_id}/"


def file_key(expert_id: str, file_id: str, filename: str) -> str:
    return f"{expert_prefix(expert_id)}{file_id}/{filename}"


def safe_filename(raw: str | None) -> str:
    """The name a user sees, made safe to store: no folders, no control characters, bounded."""
    name = unicodedata.normalize("NFC", raw or "")
    name = PurePath(name.replace("\\", "/")).name
    name = _UNSAFE_NAME_CHARS.sub("", name).strip().lstrip(".")
    if not name:
        raise UploadRejected("every file needs a name")
    if len(name) > MAX_FILENAME_CHARS or len(name.encode()) > MAX_FILENAME_BYTES:
        stem, dot, ext = name.rpartition(".")
        ext = f".{ext}" if dot and len(ext) <= 10 else ""
        stem = (stem if dot else name)[: MAX_FILENAME_CHARS - len(ext)]
        budget = MAX_FILENAME_BYTES - len(ext.encode())
        # Cut on a character boundary: drop whole characters until the bytes fit.
        stem = stem.encode()[:budget].decode(errors="ignore")
        name = stem + ext
    return name


def _extension(filename: str) -> str:
    suffix = PurePath(filename).suffix.lower()
    return suffix


def check_plain_text(value: str | None, field: str) -> None:
    """Refuse (422) a text field holding a control (C0, DEL, C1) or bidirectional-control character."""
    if not value:
        return
    for pattern, kind in (
        (_CONTROL_CHARS, "a control character"),
        (_BIDI_CHARS, "an invisible text-direction mark"),
    ):
        found = pattern.search(value)
        if found:
            code = f"U+{ord(found.group()):04X}"
            raise UploadRejected(
                f"{field} contains {kind} ({code} at position {found.start() + 1}); use plain text", 422
            )


def validate_request(
    name: str, uploads: Sequence[Upload], limits: UploadLimits, agent_id: str | None = None
) -> str:
    check_plain_text(name, "name")
    check_plain_text(agent_id, "agent_id")
    name = (name or "").strip()
    if not name:
        raise UploadRejected("the expert needs a name")
    if len(name) > 200:
        raise UploadRejected("the expert's name is longer than 200 characters")
    if not uploads:
        raise UploadRejected("upload at least one file")
    if len(uploads) > limits.max_files:
        raise UploadRejected(f"too many files: {len(uploads)} (at most {limits.max_files})", 413)
    for upload in uploads:
        ext = _extension(safe_filename(upload.filename))
        if ext not in limits.allowed_extensions:
            allowed = ", ".join(sorted(limits.allowed_extensions))
            shown = ext or "no extension"
            raise UploadRejected(
                f"unsupported file type ({shown}) for '{upload.filename}'; supported: {allowed}", 415
            )
    return name


def _store_files(
    storage: FileStorage, expert_id: str, uploads: Sequence[Upload], limits: UploadLimits
) -> list[ExpertFile]:
    """Store every upload, or none: on any failure the files stored so far are removed."""
    rows: list[ExpertFile] = []
    total = 0
    try:
        for upload in uploads:
            filename = safe_filename(upload.filename)
            file_id = uuid.uuid4().hex
            key = file_key(expert_id, file_id, filename)
            try:
                stored = storage.save(key, upload.stream, max_bytes=limits.max_file_bytes)
            except ValueError as exc:  # FileTooLarge and friends
                raise UploadRejected(f"'{filename}': {exc}", 413) from exc
            rows.append(
                ExpertFile(
                    id=file_id,
                    expert_id=expert_id,
                    filename=filename,
                    storage_key=stored.key,
                    size_bytes=stored.size_bytes,
                    content_sha256=stored.sha256,
                )
            )
            total += stored.size_bytes
            if total > limits.max_total_bytes:
                raise UploadRejected(
                    f"the upload is larger than the limit of {limits.max_total_bytes} bytes", 413
                )
    except BaseException:
        remove_stored(storage, expert_id, rows)
        raise
    return rows


def remove_stored(storage: FileStorage, expert_id: str, rows: Sequence[ExpertFile]) -> None:
    for row in rows:
        storage.delete_prefix(f"{expert_prefix(expert_id)}{row.id}/")


def create_expert(
    db: Session,
    storage: FileStorage,
    *,
    name: str,
    uploads: Sequence[Upload],
    limits: UploadLimits,
    agent_id: str | None = None,
    queued: bool = True,
    owner: str | None = None,
) -> tuple[Expert, ExpertProcessingProgress]:
    name = validate_request(name, uploads, limits, agent_id=agent_id)
    expert = Expert(id=str(uuid.uuid4()), name=name, agent_id=agent_id, owner=owner)
    try:
        rows = _store_files(storage, expert.id, uploads, limits)
        db.add(expert)
        db.flush()
        db.add_all(rows)
        db.flush()
        progress = ExpertProcessingProgressService(db).create_progress_record(
            expert_id=expert.id, agent_id=agent_id, total_files=len(rows), queued=queued
        )
    except BaseException:
        db.rollback()
        storage.delete_prefix(expert_prefix(expert.id))
        raise
    return expert, progress


def add_files(
    db: Session, storage: FileStorage, expert: Expert, *, uploads: Sequence[Upload], limits: UploadLimits
) -> list[ExpertFile]:
    """Store more files for an existing expert; the caller queues the expert again."""
    validate_request(expert.name, uploads, limits)
    stored = _store_files(storage, expert.id, uploads, limits)
    try:
        db.add_all(stored)
        db.commit()
    except BaseException:
        db.rollback()
        remove_stored(storage, expert.id, stored)
        raise
    return stored


def ready_to_chat(record: ExpertProcessingProgress | None, files: Iterable[ExpertFile]) -> bool:
    """The one definition of "ready": not being (re)processed now, and at least one file indexed.

    The progress row is not required: the daily cleanup removes it (COMPLETED_RETENTION_DAYS)
    while the expert's vectors stay, so a finished expert must stay ready without it.
    """
    if record is not None and record.status in ACTIVE_STATUSES:
        return False
    return any(f.status == FileStatus.INDEXED for f in files)


def is_ready(db: Session, expert_id: str) -> bool:
    record = ExpertProcessingProgressService(db).get_progress(expert_id)
    return ready_to_chat(record, files_of(db, [expert_id])[expert_id])


def get_expert(db: Session, expert_id: str) -> Expert | None:
    return db.get(Expert, expert_id)


def list_experts(db: Session, expert_ids: Any = None) -> list[Expert]:
    """Every expert, newest first; `expert_ids` (ids or a subquery of ids) narrows them."""
    query = select(Expert)
    if expert_ids is not None:
        query = query.where(Expert.id.in_(expert_ids))
    return list(db.scalars(query.order_by(Expert.created_at.desc(), Expert.id)))


def files_of(db: Session, expert_ids: Sequence[str]) -> dict[str, list[ExpertFile]]:
    result: dict[str, list[ExpertFile]] = {expert_id: [] for expert_id in expert_ids}
    if expert_ids:
        query = select(ExpertFile).where(ExpertFile.expert_id.in_(expert_ids))
        for row in db.scalars(query.order_by(ExpertFile.created_at, ExpertFile.id)):
            result[row.expert_id].append(row)
    return result


def delete_expert_rows(db: Session, expert_id: str) -> bool:
    """Remove the expert, its file rows, progress and history. Stored data is the caller's."""
    expert = db.get(Expert, expert_id)
    if expert is None:
        return False
    db.query(ExpertFile).filter(ExpertFile.expert_id == expert_id).delete()
    db.delete(expert)
    db.flush()
    ExpertProcessingProgressService(db).delete_progress(expert_id)  # commits
    return True
