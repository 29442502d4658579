"""Signing webhook requests, and verifying them for receivers.

Request::

    POST <url>
    Content-Type: application/json
    X-Expert-Pipeline-Event: expert.completed            (or expert.failed / expert.cancelled)
    X-Expert-Pipeline-Delivery: <delivery id>            (new for every attempt: [A-Za-z0-9_-]{1,128})
    X-Expert-Pipeline-Signature: t=<unix ts>,v1=<hex>    (only when WEBHOOK_SECRET is set)

    <the event body, see `payload`>

`v1` is hex(HMAC-SHA256(WEBHOOK_SECRET, f"{t}.{delivery id}.{raw body}")): the signature covers
the time, the delivery id and the body, so none of them can be swapped. Receivers call
`verify_webhook` with a `ReplayGuard` (or do the same in their language): it rejects a bad
signature, a `t` more than `tolerance_seconds` from now, and a delivery id already accepted
within that window, so a captured request cannot be replayed, neither later (stale `t`) nor at
once (remembered id). A retry is a new delivery of the same event (same `event_id`).
Without `WEBHOOK_SECRET` requests are sent UNSIGNED (no signature header): receivers then
cannot tell our requests from anyone else's, so set a secret in production.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

SIGNATURE_HEADER = "X-Expert-Pipeline-Signature"
DELIVERY_HEADER = "X-Expert-Pipeline-Delivery"
DEFAULT_TOLERANCE_SECONDS = 300

_DELIVERY_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")


def new_delivery_id() -> str:
    """A fresh id for one delivery attempt (no dots, so "<t>.<id>.<body>" splits one way only)."""
    return uuid.uuid4().hex


def _digest(secret: str, timestamp: int, delivery_id: str, body: bytes) -> str:
    if not _DELIVERY_ID.fullmatch(delivery_id):
        raise ValueError(f"invalid delivery id {delivery_id!r}")
    message = f"{timestamp}.{delivery_id}.".encode() + body
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, timestamp: int | None = None, *, delivery_id: str) -> str:
    """The `X-Expert-Pipeline-Signature` value: `t=<unix ts>,v1=<hex hmac of "t.delivery_id.body">`."""
    ts = int(time.time()) if timestamp is None else int(timestamp)
    return f"t={ts},v1={_digest(secret, ts, delivery_id, body)}"


def _parse_signature(header: str) -> tuple[int, list[str]] | None:
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            return None
        if key == "t":
            try:
                timestamp = int(value)
            except ValueError:
                return None
        elif key == "v1":
            candidates.append(value)
    if timestamp is None or not candidates:
        return None
    return timestamp, candidates


def _seconds(now: float | datetime | None) -> float:
    return time.time() if now is None else (now.timestamp() if isinstance(now, datetime) else float(now))


def verify_signature(
    secret: str,
    body: bytes,
    header: str,
    tolerance_seconds: float = DEFAULT_TOLERANCE_SECONDS,
    now: float | datetime | None = None,
    *,
    delivery_id: str,
) -> bool:
    """True only if `header` signs exactly this delivery id and body with `secret`, recently.

    Rejects a malformed header or delivery id, an empty secret, a timestamp further than
    `tolerance_seconds` from `now` (in either direction: replays and clock tricks), and any
    other signature. Several `v1=` entries are accepted (one must match), for secret rotation
    by the sender. It does not remember delivery ids: `verify_webhook` with a `ReplayGuard` does.
    """
    if not secret or not header or not _DELIVERY_ID.fullmatch(delivery_id or ""):
        return False
    parsed = _parse_signature(header)
    if parsed is None:
        return False
    timestamp, candidates = parsed
    if abs(_seconds(now) - timestamp) > tolerance_seconds:
        return False
    expected = _digest(secret, timestamp, delivery_id, body)
    # No early exit: compare every candidate, each in constant time.
    matched = False
    for candidate in candidates:
        matched |= hmac.compare_digest(expected.encode(), candidate.encode())
    return matched


class WebhookRejected(ValueError):
    """A received webhook that must not be acted on; `reason` is a short code for the receiver's log."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason  # "unsigned", "malformed", "bad_signature", "stale", "replayed"


class ReplayGuard:
    """The delivery ids a receiver has accepted, each kept until its `t` leaves the tolerance window.

    After that a replay is refused by its stale `t` anyway, so memory stays bounded by the
    deliveries of one window. In memory, for one process; a receiver running several processes
    keeps the same (id, expiry) pairs in a shared store (e.g. a unique key with a TTL).
    """

    def __init__(self) -> None:
        self._expiry: dict[str, float] = {}  # delivery id -> forget after (unix seconds)
        self._lock = threading.Lock()

    def first_time(self, delivery_id: str, forget_after: float, now: float) -> bool:
        """Remember `delivery_id`; False if it was already remembered (a replay)."""
        with self._lock:
            for seen in [k for k, until in self._expiry.items() if until < now]:
                del self._expiry[seen]
            if delivery_id in self._expiry:
                return False
            self._expiry[delivery_id] = forget_after
            return True

    def __len__(self) -> int:
        with self._lock:
            return len(self._expiry)


@dataclass(frozen=True)
class VerifiedWebhook:
    delivery_id: str
    timestamp: int
    event: dict[str, Any]  # the parsed body; de-duplicate on event["event_id"]


def verify_webhook(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    replay_guard: ReplayGuard | None,
    *,
    tolerance_seconds: float = DEFAULT_TOLERANCE_SECONDS,
    now: float | datetime | None = None,
) -> VerifiedWebhook:
    """Check a received request end to end, for receivers and tests; raise `WebhookRejected`.

    Order: signature (over t, delivery id and body) and time window first, and only then is the
    delivery id remembered, so forged requests can never fill or poison the guard. Pass a
    `ReplayGuard` to refuse a delivery id seen before (None skips that check: not recommended).
    """
    lowered = {key.lower(): value for key, value in headers.items()}
    header = lowered.get(SIGNATURE_HEADER.lower(), "")
    delivery_id = lowered.get(DELIVERY_HEADER.lower(), "")
    if not header:
        raise WebhookRejected("unsigned", f"no {SIGNATURE_HEADER} header")
    parsed = _parse_signature(header)
    if parsed is None or not _DELIVERY_ID.fullmatch(delivery_id):
        raise WebhookRejected("malformed", f"malformed {SIGNATURE_HEADER} or {DELIVERY_HEADER} header")
    current = _seconds(now)
    timestamp = parsed[0]
    # Signature before time: a forged request learns nothing about the window.
    if not verify_signature(
        secret, body, header, tolerance_seconds=float("inf"), now=current, delivery_id=delivery_id
    ):
        raise WebhookRejected("bad_signature", "the signature does not match this body and delivery id")
    if abs(current - timestamp) > tolerance_seconds:
        raise WebhookRejected(
            "stale", f"signed {current - timestamp:.0f} s from now, outside ±{tolerance_seconds:g} s"
        )
    if replay_guard is not None and not replay_guard.first_time(
        delivery_id, timestamp + tolerance_seconds, current
    ):
        raise WebhookRejected("replayed", f"delivery {delivery_id} was already received")
    try:
        event = json.loads(body)
    except ValueError:
        raise WebhookRejected("malformed", "the body is not JSON") from None
    if not isinstance(event, dict):
        raise WebhookRejected("malformed", "the body is not a JSON object")
    return VerifiedWebhook(delivery_id=delivery_id, timestamp=timestamp, event=event)
