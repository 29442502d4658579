"""The webhook event body: the finished expert's progress, presented as the API presents it.

    {"event_id": "...", "type": "expert.completed", "created_at": "2026-...Z",
     "expert_id": "...", "progress": {<the specification's progress fields>}}

`event_id` is the same for every URL and every retry: it is what a receiver de-duplicates on.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from expert_pipeline.core.models import ExpertProcessingProgress, Status, utcnow
from expert_pipeline.core.progress_public import present
from expert_pipeline.core.settings import Settings, get_settings

EVENT_TYPES: dict[str, str] = {
    Status.COMPLETED: "expert.completed",
    Status.FAILED: "expert.failed",
    Status.CANCELLED: "expert.cancelled",
}


def isoformat_utc(value: datetime | None) -> str | None:
    """ISO 8601 in UTC with a `Z`, as the specification writes times (and the API sends them)."""
    if value is None:
        return None
    if value.tzinfo is None:
        raise ValueError("naive datetimes are ambiguous; pass a timezone-aware value")
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def progress_payload(record: ExpertProcessingProgress, settings: Settings | None = None) -> dict[str, Any]:
    """The record as the specification's progress JSON, presented as the API presents it."""
    return present(record, settings or get_settings()).spec_json()


def event_type_for(status: str) -> str:
    try:
        return EVENT_TYPES[Status(status)]
    except (KeyError, ValueError):
        raise ValueError(
            f"no webhook event for status '{status}' (only completed, failed, cancelled)"
        ) from None


def build_event(
    record: ExpertProcessingProgress,
    *,
    event_id: str | None = None,
    created_at: datetime | None = None,
    settings: Settings | None = None,
) -> dict[str, Any]:
    return {
        "event_id": event_id or str(uuid.uuid4()),
        "type": event_type_for(record.status),
        "created_at": isoformat_utc(created_at or utcnow()),
        "expert_id": record.expert_id,
        "progress": progress_payload(record, settings),
    }


def encode_body(payload: Mapping[str, Any]) -> bytes:
    """The exact bytes sent and signed."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
