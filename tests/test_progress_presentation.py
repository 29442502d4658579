"""One presentation of a progress record: one model, one present(), one table of words."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from expert_pipeline.cli.ingest import render_bar
from expert_pipeline.core import auth
from expert_pipeline.core.models import Stage, Status
from expert_pipeline.core.notifications.payload import build_event
from expert_pipeline.core.progress_public import (
    EXTRA_FIELDS,
    SPEC_FIELDS,
    STAGE_LABELS,
    STATUS_LABELS,
    ProgressRecord,
    progress_in_words,
)
from expert_pipeline.core.progress_service import ExpertProcessingProgressService
from expert_pipeline.core.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
SPEC_EXAMPLE = json.loads((Path(__file__).parent / "data" / "spec_progress_example.json").read_text())
SOURCES = [
    *sorted((ROOT / "expert_pipeline").rglob("*.py")),
    *sorted((ROOT / "status_api").rglob("*.py")),
    ROOT / "dashboard" / "app.js",
]


def test_spec_fields_are_the_spec_examples_keys_in_order() -> None:
    assert SPEC_FIELDS == tuple(SPEC_EXAMPLE["progress"])
    # Declared by name: the specification's fields first, then only the documented extras.
    assert tuple(ProgressRecord.model_fields) == SPEC_FIELDS + EXTRA_FIELDS


def test_the_model_takes_its_stages_and_statuses_from_the_core_enums() -> None:
    fields = ProgressRecord.model_fields
    assert (fields["stage"].annotation, fields["status"].annotation) == (Stage, Status)
    with pytest.raises(ValueError):
        ProgressRecord.model_validate({**SPEC_EXAMPLE["progress"], "stage": "dreaming"})


def test_the_openapi_document_shows_the_same_enums(http: httpx.Client) -> None:
    schemas = http.get("/openapi.json").json()["components"]["schemas"]
    assert schemas["Stage"]["enum"] == [s.value for s in Stage]
    assert schemas["Status"]["enum"] == [s.value for s in Status]
    record = schemas["ProgressRecord"]
    assert tuple(record["properties"]) == SPEC_FIELDS + EXTRA_FIELDS
    assert record["properties"]["stage"] == {"$ref": "#/components/schemas/Stage"}
    assert record["properties"]["status"] == {"$ref": "#/components/schemas/Status"}


def test_a_webhook_carries_what_the_api_shows(http: httpx.Client, engine: Engine, settings: Settings) -> None:
    with Session(engine, expire_on_commit=False) as session:
        service = ExpertProcessingProgressService(session)
        service.create_progress_record(expert_id="e1", agent_id="agent-1", total_files=2)
        service.update_progress(expert_id="e1", stage="embedding", details={"batch": "1/2"})
        record = service.mark_failed(expert_id="e1", error_message="disk full")
        event = build_event(record, settings=settings)
    shown = http.get("/api/experts/e1/progress").json()["progress"]
    assert event["progress"] == {name: shown[name] for name in SPEC_FIELDS}
    assert list(event["progress"]) == list(SPEC_FIELDS)


def test_the_labels_endpoint_serves_the_one_table(http: httpx.Client) -> None:
    response = http.get("/api/meta/labels")
    assert response.status_code == 200
    assert response.json() == {
        "stages": {stage.value: words for stage, words in STAGE_LABELS.items()},
        "statuses": {status.value: words for status, words in STATUS_LABELS.items()},
        "status_over_stage": ["pending", "cancelled"],
    }
    assert set(STAGE_LABELS) == set(Stage) and set(STATUS_LABELS) == set(Status)
    labels = http.get("/openapi.json").json()["paths"]["/api/meta/labels"]["get"]
    assert labels["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/LabelsResponse"
    }


def test_the_labels_endpoint_needs_no_token(http: httpx.Client, engine: Engine) -> None:
    with Session(engine) as session:
        auth.create_token(session, "alice")  # tokens exist: every other /api/* path wants one
    assert http.get("/api/experts/progress/active").status_code == 401
    assert http.get("/api/meta/labels").json()["stages"]["embedding"] == STAGE_LABELS[Stage.EMBEDDING]


def test_events_chat_and_the_cli_say_the_same_words(http: httpx.Client, engine: Engine) -> None:
    with Session(engine, expire_on_commit=False) as session:
        service = ExpertProcessingProgressService(session)
        service.create_progress_record(expert_id="e1", total_files=1)
        record = service.update_progress(expert_id="e1", stage="embedding", progress_percentage=45.0)
    words = STAGE_LABELS[Stage.EMBEDDING]
    events = http.get("/api/experts/e1/progress/events").json()["events"]
    assert events[-1]["message"] == words
    assert f"  {words}  " in render_bar(record)
    assert progress_in_words(record.status, record.stage) == words
    assert progress_in_words("pending", "file_processing") == STATUS_LABELS[Status.PENDING]
    assert progress_in_words("completed", "complete") == STAGE_LABELS[Stage.COMPLETE]


def test_one_definition_of_the_fields_and_the_words() -> None:
    """No other module spells out the spec's field list or the stage words."""
    field_list = re.compile(r'"id",\s*"expert_id",\s*"agent_id",\s*"stage",')
    defining_fields = [p.relative_to(ROOT).as_posix() for p in SOURCES if field_list.search(p.read_text())]
    assert defining_fields == ["expert_pipeline/core/progress_public.py"]
    for words in STAGE_LABELS.values():
        if words in ("Complete", "Failed"):
            continue  # too common to grep for; the tables above cover them
        having = [p.relative_to(ROOT).as_posix() for p in SOURCES if f'"{words}"' in p.read_text()]
        assert having == ["expert_pipeline/core/progress_public.py"], words
