"""Riding out a brief database outage (a PostgreSQL restart or failover) inside a run.

A run worker spends minutes embedding; if the database restarts meanwhile, the next progress
write, file update or embedding-cache lookup fails. Failing the whole run for that would
throw away paid-for work and show the user a false "failed", so such calls are retried with
backoff (tenacity) for up to `patience` seconds. Only connection-level errors are retried:
a constraint violation or a bad query is a bug and surfaces at once. Callers get told how long
the outage lasted, so the expert's history can say what happened.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_exponential

log = logging.getLogger(__name__)

T = TypeVar("T")

# Long enough for a restart or a managed failover (typically 10-60 s), short enough that a
# database that is really gone fails the run while someone is still looking.
DEFAULT_PATIENCE_SECONDS = 120.0

OutageHandler = Callable[[float, int], None]


def is_transient(exc: BaseException) -> bool:
    """A lost or refused connection (worth retrying), as opposed to an error in the statement."""
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    if isinstance(exc, OperationalError):
        if type(exc.orig).__module__ == "sqlite3":
            # SQLite reports a missing table as an OperationalError too; only contention passes.
            return "locked" in str(exc.orig) or "busy" in str(exc.orig)
        # "connection refused", "server closed the connection", "the database system is
        # starting up / shutting down".
        return True
    return isinstance(exc, InterfaceError)


def call_with_db_retry(
    fn: Callable[[], T],
    *,
    patience: float = DEFAULT_PATIENCE_SECONDS,
    on_recovered: OutageHandler | None = None,
    what: str = "database call",
) -> T:
    """`fn()`, retried while the database is unreachable; `on_recovered(seconds, attempts)`
    is called once it answers again after at least one failure."""
    started = time.monotonic()

    def _log_retry(state: object) -> None:
        attempt = getattr(state, "attempt_number", 0)
        outcome = getattr(state, "outcome", None)
        error = outcome.exception() if outcome is not None else None
        log.warning(
            "%s failed (attempt %d), retrying: %s", what, attempt, str(error).splitlines()[0] if error else ""
        )

    retrying = Retrying(
        retry=retry_if_exception(is_transient),
        stop=stop_after_delay(patience),
        wait=wait_exponential(multiplier=0.25, max=5.0),
        before_sleep=_log_retry,
        reraise=True,
    )
    result = retrying(fn)
    attempts = retrying.statistics.get("attempt_number", 1)
    if attempts > 1 and on_recovered is not None:
        on_recovered(time.monotonic() - started, attempts)
    return result
