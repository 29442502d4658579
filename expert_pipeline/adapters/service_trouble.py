"""What an outside service's SDK retried behind our back, for the expert's history.

The OpenAI and S3 SDKs retry 429s and 5xx answers themselves (we rely on that rather than
writing our own loops), which makes an ingest that limped through a provider outage look
exactly like one that did not. Each client reports every answer it receives here, through the
SDK's own hook (an httpx response hook; botocore's `response-received` event); the assets take
what was collected after each step (a batch, a file) and `TroubleEpisodes` turns the steps into
a line or two per episode of trouble rather than one per step.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass
from typing import Any

# Answers the SDKs retry besides 5xx: request timeout, conflict (a lock), rate limited.
RETRIED_STATUSES = frozenset({408, 409, 429})

# Recorded for a request that got no answer at all (refused, reset, timed out).
NO_ANSWER = 0

_WORDS = {
    408: "request timeout",
    409: "conflict",
    429: "rate limited",
    500: "server error",
    502: "bad gateway",
    503: "unavailable",
    504: "timeout",
}
_TIMES = {1: "once", 2: "twice"}

RETRIED = "retried successfully"
GAVE_UP = "the retries ran out"


def is_trouble(status: int) -> bool:
    return status == NO_ANSWER or status in RETRIED_STATUSES or status >= 500


def status_words(status: int) -> str:
    """E.g. "429 (rate limited)"."""
    if status == NO_ANSWER:
        return "no answer"
    return f"{status} ({_WORDS[status]})" if status in _WORDS else str(status)


class TroubleLog:
    """Thread-safe counts of troubled answers (HTTP status -> how many), taken and reset."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[int] = Counter()

    def record(self, status: int) -> None:
        if is_trouble(status):
            with self._lock:
                self._counts[status] += 1

    def take(self) -> dict[int, int]:
        with self._lock:
            counts, self._counts = dict(self._counts), Counter()
        return counts


class ServiceUnavailable(Exception):
    """An outside service still failing when its SDK stopped retrying.

    `str()` is the detail for logs (endpoint, request); `answer` is the short form for users.
    """

    def __init__(self, detail: str, *, service: str, status: int, attempts: int) -> None:
        super().__init__(detail)
        self.service = service
        self.status = status
        self.attempts = attempts

    @property
    def answer(self) -> str:
        """E.g. "answered 503 (unavailable) on all 6 attempts" or "could not be reached"."""
        what = "could not be reached" if self.status == NO_ANSWER else f"answered {status_words(self.status)}"
        return what if self.attempts <= 1 else f"{what} on all {self.attempts} attempts"


def describe(
    service: str, counts: dict[int, int], outcome: str = RETRIED, steps: int = 1, unit: str = ""
) -> str:
    """E.g. "The embedding provider answered 429 (rate limited) 3 times, 500 (server error) once;
    retried successfully"; "over 4 batches in a row" when the trouble spanned several steps."""
    clauses = []
    if counts.get(NO_ANSWER):
        clauses.append(f"could not be reached {_times(counts[NO_ANSWER])}")
    answered = [f"{status_words(s)} {_times(n)}" for s, n in sorted(counts.items()) if s != NO_ANSWER]
    if answered:
        clauses.append(f"answered {', '.join(answered)}")
    span = f" over {steps} {unit} in a row" if steps > 1 else ""
    return f"The {service} {' and '.join(clauses)}{span}; {outcome}"


def _times(n: int) -> str:
    return _TIMES.get(n, f"{n} times")


@dataclass(frozen=True)
class TroubleReport:
    """One line for the history, and the numbers behind it for the event's data."""

    message: str
    statuses: dict[int, int]
    steps: int
    gave_up: bool

    def data(self, kind: str, **extra: Any) -> dict[str, Any]:
        return {
            "kind": kind,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "steps": self.steps,
            "gave_up": self.gave_up,
            **extra,
        }


class TroubleEpisodes:
    """Coalesces per-step trouble into episodes: a run of consecutive steps that saw retries.

    The first troubled step is reported at once (so someone watching sees it while it lasts);
    if the episode goes on, its later steps are only counted, and one more line gives the whole
    episode's counts when a clean step (or the end) closes it. A step that failed for good
    closes the episode at once, saying the retries ran out.
    """

    def __init__(self, service: str, unit: str) -> None:
        self._service = service
        self._unit = unit
        self._counts: Counter[int] = Counter()
        self._steps = 0

    def after_step(self, counts: dict[int, int], *, failed: bool = False) -> TroubleReport | None:
        if not counts:
            return self.close()
        self._counts.update(counts)
        self._steps += 1
        if failed:
            return self._end(GAVE_UP)
        if self._steps == 1:
            return TroubleReport(describe(self._service, counts), dict(counts), 1, False)
        return None

    def open_episode(self) -> dict[str, Any]:
        """The episode still open, to be carried on by a later step (`carry_on`)."""
        return {"statuses": {str(k): v for k, v in self._counts.items()}, "steps": self._steps}

    def carry_on(self, episode: dict[str, Any] | None) -> None:
        """Continue an episode an earlier step left open (its first line is already said)."""
        if episode:
            self._counts = Counter({int(k): int(v) for k, v in episode["statuses"].items()})
            self._steps = int(episode["steps"])

    def close(self) -> TroubleReport | None:
        """End the open episode; a line only if it went on past the step already reported."""
        if self._steps <= 1:
            self._counts, self._steps = Counter(), 0
            return None
        return self._end(RETRIED)

    def _end(self, outcome: str) -> TroubleReport:
        counts, steps = dict(self._counts), self._steps
        self._counts, self._steps = Counter(), 0
        message = describe(self._service, counts, outcome, steps, self._unit)
        return TroubleReport(message, counts, steps, gave_up=outcome == GAVE_UP)
