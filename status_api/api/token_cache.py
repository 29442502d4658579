"""API tokens held in memory, so that authenticating a request costs no database query.

The table is read whole (hashes, owners, expiry, revocation, last use) in a worker thread, in
the background: every `refresh_seconds` while requests come, and at once after this process
writes a token (created, revoked, or its last use recorded: `status_api.live.local_writes`).
A copy older than `max_age_seconds`, or read before this process's last token write, is not
used: the gate then asks the database, as it always did. So a token revoked through the app is
refused at once, and one revoked by another process (the CLI) within `max_age_seconds`.

Only the common case is answered here: a known token that is accepted, not expired (checked
against the clock on every request) and whose last use was recorded less than
`auth.LAST_USED_RESOLUTION` ago. Everything else (unknown, revoked, expired tokens, their
exact messages, local mode, recording a use) goes to the database exactly as before.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import anyio.to_thread
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from expert_pipeline.core.auth import LAST_USED_RESOLUTION, Principal, hash_token, principal_of
from expert_pipeline.core.models import ApiToken
from status_api.live import local_writes

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Token:
    principal: Principal
    usable: bool  # not revoked
    expires_at: float | None  # POSIX seconds
    recorded_until: float  # POSIX seconds until which a use needs no new `last_used_at`


@dataclass(frozen=True, slots=True)
class _Copy:
    tokens: dict[str, _Token]  # by SHA-256
    read_at: float  # time.monotonic() when the read started


class TokenCache:
    def __init__(self, engine: Engine, *, refresh_seconds: float = 1.0, max_age_seconds: float = 3.0) -> None:
        local_writes.install()
        self.engine = engine
        self.refresh_seconds = refresh_seconds
        self.max_age_seconds = max_age_seconds
        self._copy: _Copy | None = None
        self._refreshing: asyncio.Task[None] | None = None
        self.refreshes = 0  # for tests and benchmarks

    def principal(self, token: str) -> Principal | None:
        """The token's principal from memory; None: ask the database. Call on the event loop."""
        copy = self._copy
        now = time.monotonic()
        if copy is None or copy.read_at <= local_writes.written_at(local_writes.TOKENS):
            self._refresh_soon()
            return None
        age = now - copy.read_at
        if age > self.refresh_seconds:
            self._refresh_soon()
            if age > self.max_age_seconds:
                return None
        entry = copy.tokens.get(hash_token(token))
        if entry is None or not entry.usable:
            return None
        wall = time.time()
        if (entry.expires_at is not None and entry.expires_at <= wall) or wall >= entry.recorded_until:
            return None
        return entry.principal

    def invalidate(self) -> None:
        """Read the table again before the next request is answered from memory."""
        self._copy = None
        self._refresh_soon()

    def _refresh_soon(self) -> None:
        if self._refreshing is not None and not self._refreshing.done():
            return
        self._refreshing = asyncio.get_running_loop().create_task(self._refresh(), name="token-cache")

    async def _refresh(self) -> None:
        started = time.monotonic()
        try:
            tokens = await anyio.to_thread.run_sync(self._read)
        except Exception as exc:  # noqa: BLE001 - the gate asks the database (and says 503) meanwhile
            log.warning("cannot read the API tokens into memory: %s", exc.__class__.__name__)
            return
        self.refreshes += 1
        self._copy = _Copy(tokens, started)

    def _read(self) -> dict[str, _Token]:
        resolution = LAST_USED_RESOLUTION.total_seconds()
        with Session(self.engine) as session:
            rows = session.scalars(select(ApiToken)).all()
        return {
            row.token_sha256: _Token(
                principal=principal_of(row),
                usable=row.revoked_at is None,
                expires_at=row.expires_at.timestamp() if row.expires_at is not None else None,
                recorded_until=row.last_used_at.timestamp() + resolution if row.last_used_at else 0.0,
            )
            for row in rows
        }
