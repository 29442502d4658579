"""Writes this process makes to the tables the in-memory answers come from.

The status API answers the polled progress reads and authenticates tokens from memory
(`snapshot`, `status_api.api.token_cache`), refreshed by the broadcaster's tick. Another
process's write shows within a tick; a write made here (a cancel, a delete, a token created or
revoked through the app or a test's session) must show at once, so every statement that
changes those tables, and its commit, stamps the moment here: memory read before that moment is
not used again (the database answers until a read started after it).

Hooked on SQLAlchemy's `Engine` class (every engine of the process), once: a statement is
stamped when it runs, and again once committed (a session's `after_commit`, or the connection
going back to its pool), since a read that started between the two saw the old row. A write
through a raw DB-API connection is not seen: it counts as another process's (within a tick).
"""

from __future__ import annotations

import re
import threading
import time
from typing import Any

from sqlalchemy import Engine, event
from sqlalchemy.orm import Session
from sqlalchemy.pool import Pool

PROGRESS = 1  # the progress rows and the experts (owners) they are shown with
TOKENS = 2  # API tokens
_TABLES = (
    (re.compile(r"\b(?:expert_processing_progress|experts)\b"), PROGRESS),
    (re.compile(r"\bapi_tokens\b"), TOKENS),
)
_WRITES = ("INSERT", "UPDATE", "DELETE", "REPLACE")
_TOUCHED = "status_api.local_writes"

_lock = threading.Lock()
_written_at: dict[int, float] = {PROGRESS: 0.0, TOKENS: 0.0}
_installed = False
# What the statements run on this thread wrote since its last commit (sessions stay on a thread).
_thread = threading.local()


def written_at(kind: int) -> float:
    """`time.monotonic()` of this process's last write of that kind (0.0: none yet)."""
    return _written_at[kind]


def _stamp(kinds: int) -> None:
    now = time.monotonic()
    for kind in (PROGRESS, TOKENS):
        if kinds & kind:
            _written_at[kind] = now


def kinds_of(statement: str) -> int:
    """Which watched tables a statement writes (0 for reads and other tables)."""
    head = statement.lstrip()[:7].upper()
    if not head.startswith(_WRITES):
        return 0
    kinds = 0
    for pattern, kind in _TABLES:
        if pattern.search(statement):
            kinds |= kind
    return kinds


def _after_execute(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
    kinds = kinds_of(statement)
    if kinds:
        conn.info[_TOUCHED] = conn.info.get(_TOUCHED, 0) | kinds
        _thread.kinds = getattr(_thread, "kinds", 0) | kinds
        _stamp(kinds)  # before the commit too: memory must not outlive the old row


def _after_commit(_: Any) -> None:
    kinds = getattr(_thread, "kinds", 0)
    if kinds:
        _thread.kinds = 0
        _stamp(kinds)


def _checkin(_: Any, record: Any) -> None:
    kinds = record.info.pop(_TOUCHED, 0) if record is not None else 0
    if kinds:
        _stamp(kinds)


def install() -> None:
    """Hook every engine of the process (idempotent)."""
    global _installed
    with _lock:
        if _installed:
            return
        event.listen(Engine, "after_cursor_execute", _after_execute)
        event.listen(Session, "after_commit", _after_commit)
        event.listen(Pool, "checkin", _checkin)
        _installed = True
