"""What an outside service's SDK retried behind our back, for the expert's history.

The OpenAI and S3 SDKs retry 429s and 5xx answers themselves (we rely on that rather than
writing our own loops), which makes an ingest that limped through a provider outage look
exactly like one that did not. Each client reports every answer it receives here, through the
SDK's own hook (an httpx response hook; botocore's `response-received` event), and the assets
turn what was collected into one history line per batch or file.
"""

from __future__ import annotations

import threading
from collections import Counter

# Answers the SDKs retry: rate limited, timeouts and conflicts, server errors.
RETRIED_STATUSES = frozenset({408, 409, 429})

_WORDS = {429: "rate limited", 503: "unavailable", 500: "server error", 502: "bad gateway", 504: "timeout"}


_TIMES = {1: "once", 2: "twice"}

# Recorded for a request that got no answer at all (refused, reset, timed out).
NO_ANSWER = 0


def is_trouble(status: int) -> bool:
    return status == NO_ANSWER or status in RETRIED_STATUSES or status >= 500


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


def describe(service: str, counts: dict[int, int]) -> str:
    """E.g. "The embedding provider answered 429 (rate limited) 3 times, 500 (server error) once;
    the SDK retried"."""
    parts = []
    for status, n in sorted(counts.items()):
        what = "no answer (connection error)" if status == NO_ANSWER else f"{status}"
        words = f" ({_WORDS[status]})" if status in _WORDS else ""
        parts.append(f"{what}{words} {_TIMES.get(n, f'{n} times')}")
    return f"The {service} answered {', '.join(parts)}; the requests were retried"
