"""PineconeVectorStore through the real pinecone SDK over real HTTP, against the local stand-in:
what is sent (headers, request sizes and splits, deletes), retries, limits and configuration.
The behaviour every store shares (counts, queries, namespaces, deletes) is in
test_vector_store_contract.py, run on LanceDB and Pinecone alike.

The last test runs against a real Pinecone index, and only when PINECONE_API_KEY and
PINECONE_INDEX_HOST are set.
"""

from __future__ import annotations

import logging
import math
import os
import uuid
from collections.abc import Callable, Iterator

import dagster as dg
import orjson
import pinecone
import pytest

from expert_pipeline.adapters.pinecone_vector_store import (
    MAX_METADATA_BYTES,
    METADATA_BUDGET_BYTES,
    UPSERT_REQUEST_BUDGET_BYTES,
    PineconeVectorStore,
    plan_upsert_batches,
)
from expert_pipeline.adapters.vector_store import VectorRecord, vector_id
from expert_pipeline.core.ports import VectorStore
from expert_pipeline.resources.parts import PineconeVectorStoreResource
from tests.pinecone_standin import API_KEY, DIMENSION, MAX_REQUEST_BYTES, PineconeStandin
from tests.vector_records import record, unit
from tests.waiting import wait_for

UPSERT, QUERY, STATS, DELETE = "/vectors/upsert", "/query", "/describe_index_stats", "/vectors/delete"


def many(expert: str, n: int, text: str = "") -> list[VectorRecord]:
    return [record(expert, "f", i, unit(1, (i % 97) / 97, (i % 13) / 13), text=text) for i in range(n)]


@pytest.fixture
def make_store(pinecone_standin: PineconeStandin) -> Iterator[Callable[..., PineconeVectorStore]]:
    """Like the pinecone_store fixture, with some settings changed; closed afterwards."""
    made: list[PineconeVectorStore] = []

    def make(**settings: object) -> PineconeVectorStore:
        made.append(PineconeVectorStore(**{"api_key": API_KEY, "index_host": pinecone_standin.url, **settings}))
        return made[-1]

    yield make
    for store in made:
        store.close()


# ---- basic reads and writes ---------------------------------------------------------------------


def test_upsert_and_count_send_the_sdk_headers(
    pinecone_standin: PineconeStandin, pinecone_store: PineconeVectorStore
) -> None:
    assert pinecone_standin.requests == []  # the client is created lazily: nothing sent yet
    assert pinecone_store.upsert("e1", [record("e1", "f1", i, unit(1, i)) for i in range(5)]) == 5
    assert pinecone_store.count("e1") == 5
    assert pinecone_store.count("nobody") == 0

    (upsert,) = pinecone_standin.requests_to(UPSERT)
    assert upsert.vector_count == 5 and upsert.namespace == "e1"
    assert upsert.body["vectors"][0]["metadata"]["text"] == "chunk 0 of f1"
    assert len(pinecone_standin.requests_to(STATS)) == 2
    for request in pinecone_standin.requests:
        assert request.api_key == API_KEY
        assert request.api_version is not None and request.api_version.startswith("2026-")
    assert pinecone_store.index is pinecone_store.index  # one cached SDK client


def test_duplicate_ids_in_one_call_are_sent_once(
    pinecone_standin: PineconeStandin, pinecone_store: PineconeVectorStore
) -> None:
    first = record("e1", "f1", 0, unit(1), text="first")
    last = record("e1", "f1", 0, unit(0, 1), text="last")
    assert pinecone_store.upsert("e1", [first, last]) == 1
    (upsert,) = pinecone_standin.requests_to(UPSERT)
    assert upsert.ids == [first.id] and upsert.body["vectors"][0]["metadata"]["text"] == "last"


def test_a_query_asks_for_metadata_not_values_and_gets_integers_back(
    pinecone_standin: PineconeStandin, pinecone_store: PineconeVectorStore
) -> None:
    pinecone_store.upsert("e1", [record("e1", "f1", 1, unit(0, 1, 0))])
    (match,) = pinecone_store.query("e1", unit(0.1, 1, 0.2), top_k=2)
    (sent,) = pinecone_standin.requests_to(QUERY)
    assert sent.body["topK"] == 2 and sent.body["includeMetadata"] is True
    assert sent.body["includeValues"] is False and sent.body["namespace"] == "e1"
    # Pinecone keeps every metadata number as a float (the stand-in sends 2.0); the store gives
    # ints back for the fields that are ints.
    assert pinecone_standin.namespaces["e1"][match.id].metadata["page"] == 2.0
    assert type(match.metadata["page"]) is int and type(match.metadata["chunk_index"]) is int


def test_list_namespaces_follows_pinecones_pagination(
    pinecone_standin: PineconeStandin, pinecone_store: PineconeVectorStore
) -> None:
    names = [f"expert-{n}" for n in range(5)]
    for name in names:
        pinecone_store.upsert(name, [record(name, "f", 0, unit(1))])
    pinecone_standin.namespace_page_size = 2
    pinecone_standin.clear_requests()
    assert pinecone_store.list_namespaces() == names
    assert len(pinecone_standin.requests_to("/namespaces")) == 3  # pages of 2, 2 and 1


# ---- request sizes ------------------------------------------------------------------------------


def test_2500_records_are_split_into_requests_within_pinecone_limits(
    pinecone_standin: PineconeStandin, make_store: Callable[..., PineconeVectorStore]
) -> None:
    records = many("e1", 2500)
    big = make_store(upsert_batch_size=1000)
    assert big.upsert("e1", records) == 2500
    upserts = pinecone_standin.requests_to(UPSERT)
    assert [r.vector_count for r in upserts] == [1000, 1000, 500]
    assert all(r.body_bytes <= MAX_REQUEST_BYTES for r in upserts)
    sent = [vid for r in upserts for vid in r.ids]
    assert sent == [r.id for r in records]  # every record once, in order
    assert big.count("e1") == 2500

    # The default batch size (200) gives more, smaller requests; writing again replaces.
    pinecone_standin.clear_requests()
    default = make_store()
    assert default.upsert("e1", records) == 2500
    assert [r.vector_count for r in pinecone_standin.requests_to(UPSERT)] == [200] * 12 + [100]
    assert default.count("e1") == 2500


def test_long_texts_split_requests_by_size_before_count(
    pinecone_standin: PineconeStandin, make_store: Callable[..., PineconeVectorStore]
) -> None:
    # ~35 KB of metadata per record: 1000 of them would be ~35 MB, so size decides the split.
    text = ("Grüße – naïve café “quoted” text, with \"escapes\"\n and € signs. " * 600)[:30_000]
    records = many("e1", 150, text=text)
    store = make_store(upsert_batch_size=1000)
    assert store.upsert("e1", records) == 150
    upserts = pinecone_standin.requests_to(UPSERT)
    sizes = [r.body_bytes for r in upserts]
    assert len(upserts) >= 3 and sum(r.vector_count for r in upserts) == 150
    assert max(sizes) <= UPSERT_REQUEST_BUDGET_BYTES <= MAX_REQUEST_BYTES
    # Packed greedily: every request but the last is too full to take one more record.
    record_bytes = min(sizes[0] // upserts[0].vector_count, sizes[-1] // upserts[-1].vector_count)
    assert all(size > UPSERT_REQUEST_BUDGET_BYTES - 2 * record_bytes for size in sizes[:-1])
    # The size estimate is the wire size: the planned batches match the recorded bodies byte for byte.
    wire = [r.body["vectors"] for r in upserts]
    planned = plan_upsert_batches([v for batch in wire for v in batch], "e1")
    assert [len(b) for b in planned] == [r.vector_count for r in upserts]
    assert [len(orjson.dumps({"vectors": b, "namespace": "e1"})) for b in planned] == sizes
    assert store.count("e1") == 150


def test_oversized_metadata_text_is_truncated_below_the_limit(
    pinecone_standin: PineconeStandin,
    pinecone_store: PineconeVectorStore,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Multi-byte characters (2, 3 and 4 bytes in UTF-8) and characters JSON must escape.
    text = "".join(f"{i} é€😀 \"q\" \\ \n\t" for i in range(8000))
    assert len(orjson.dumps(text)) > 3 * MAX_METADATA_BYTES
    huge = record("e1", "f1", 0, unit(1), text=text)
    normal = record("e1", "f1", 1, unit(0, 1))
    with caplog.at_level(logging.WARNING):
        assert pinecone_store.upsert("e1", [huge, normal]) == 2
    assert f"metadata text cut from {len(text)} to" in caplog.text

    (sent,) = pinecone_standin.requests_to(UPSERT)
    sent_metadata = sent.body["vectors"][0]["metadata"]
    size = len(orjson.dumps(sent_metadata))
    # Below the limit, but only just: at most one (escaped, multi-byte) character short.
    assert METADATA_BUDGET_BYTES - 12 < size <= METADATA_BUDGET_BYTES < MAX_METADATA_BYTES
    stored = pinecone_store.query("e1", unit(1), top_k=1)[0].metadata
    assert text.startswith(stored["text"]) and len(stored["text"]) > 10_000
    assert stored["text"].encode("utf-8").decode("utf-8") == stored["text"]
    assert {k: v for k, v in stored.items() if k != "text"} == {
        k: v for k, v in huge.metadata.items() if k != "text"
    }
    # The other record is untouched, and a record that fits is never changed.
    assert pinecone_store.query("e1", unit(0, 1), top_k=1)[0].metadata == normal.metadata


def test_the_standin_enforces_the_limits_the_store_keeps(pinecone_standin: PineconeStandin) -> None:
    index = pinecone.Pinecone(api_key=API_KEY).index(host=pinecone_standin.url)
    with pytest.raises(pinecone.ApiError, match="Metadata size"):
        index.upsert(vectors=[{"id": "a", "values": unit(1), "metadata": {"text": "x" * 50_000}}], namespace="e1")
    with pytest.raises(pinecone.ApiError, match="exceeding the maximum of 1000"):
        index.upsert(vectors=[(f"v{i}", unit(1)) for i in range(1001)], namespace="e1")
    with pytest.raises(pinecone.PayloadTooLargeError):
        index.upsert(vectors=[{"id": f"v{i}", "values": unit(1), "metadata": {"text": "y" * 30_000}}
                              for i in range(80)], namespace="e1")
    index.close()
    assert pinecone_standin.stored_count("e1") == 0


def test_metadata_too_large_without_its_text_is_refused(
    pinecone_standin: PineconeStandin, pinecone_store: PineconeVectorStore
) -> None:
    bad = VectorRecord(id="v", values=unit(1), metadata={"filename": "x" * 50_000, "text": "t"})
    with pytest.raises(ValueError, match="even without its text"):
        pinecone_store.upsert("e1", [bad])
    assert pinecone_standin.requests == []


# ---- deletes ------------------------------------------------------------------------------------


def test_delete_ids_sends_the_ids_and_takes_404_as_nothing_to_delete(
    pinecone_standin: PineconeStandin, pinecone_store: PineconeVectorStore
) -> None:
    odd_id = "it's a \"quoted\" id"
    pinecone_store.upsert("e1", [record("e1", "f1", i, unit(1, i)) for i in range(4)])
    pinecone_store.upsert("e1", [VectorRecord(id=odd_id, values=unit(0, 0, 1), metadata={"text": "odd"})])
    pinecone_store.delete_ids("e1", [vector_id("e1", "f1", 0), odd_id, "never-stored"])
    (delete,) = pinecone_standin.requests_to(DELETE)
    assert delete.body["namespace"] == "e1" and "deleteAll" not in delete.body
    assert delete.ids == [vector_id("e1", "f1", 0), odd_id, "never-stored"]  # sent as they are

    pinecone_standin.clear_requests()
    pinecone_store.delete_ids("e1", [])
    pinecone_store.delete_ids("nobody", ["x"])  # the stand-in answers 404: nothing to delete
    assert [r.status for r in pinecone_standin.requests] == [404]
    assert pinecone_store.count("e1") == 3


def test_delete_ids_sends_at_most_1000_ids_per_request(
    pinecone_standin: PineconeStandin, pinecone_store: PineconeVectorStore
) -> None:
    records = many("e1", 2600)
    pinecone_store.upsert("e1", records)
    keep = {r.id for r in records[2500:]}
    pinecone_store.delete_ids("e1", [r.id for r in records[:2500]] + [records[0].id])  # one repeated
    deletes = pinecone_standin.requests_to(DELETE)
    assert [len(r.ids) for r in deletes] == [1000, 1000, 500]  # the repeated id once
    assert {vid for r in deletes for vid in r.ids} == {r.id for r in records} - keep


def test_delete_namespace_and_of_a_missing_namespace(
    pinecone_standin: PineconeStandin, pinecone_store: PineconeVectorStore
) -> None:
    pinecone_store.upsert("e1", [record("e1", "f1", i, unit(1, i)) for i in range(3)])
    pinecone_store.delete_namespace("e1")
    pinecone_store.delete_namespace("e1")  # gone already: Pinecone's 404 is success here
    pinecone_store.delete_namespace("never-existed")
    deletes = pinecone_standin.requests_to(DELETE, status=None)
    assert [(r.body, r.status) for r in deletes] == [
        ({"namespace": "e1", "deleteAll": True}, 200),
        ({"namespace": "e1", "deleteAll": True}, 404),
        ({"namespace": "never-existed", "deleteAll": True}, 404),
    ]


# ---- errors, retries and configuration ----------------------------------------------------------


@pytest.fixture
def sdk_waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The waits the SDK chooses between retries, recorded instead of slept: its transport's
    sleep is a seam for tests (pinecone._internal.http_client._retry_sleep)."""
    from pinecone._internal import http_client

    waits: list[float] = []
    monkeypatch.setattr(http_client, "_retry_sleep", waits.append)
    return waits


def test_a_transient_429_is_retried_by_the_sdk_honouring_retry_after(
    pinecone_standin: PineconeStandin, pinecone_store: PineconeVectorStore, sdk_waits: list[float]
) -> None:
    pinecone_standin.fail_next(2, 429, retry_after=0.05)
    assert pinecone_store.upsert("e1", [record("e1", "f1", i, unit(1, i)) for i in range(3)]) == 3
    assert [r.status for r in pinecone_standin.requests_to(UPSERT, status=None)] == [429, 429, 200]
    # The server's Retry-After (plus the SDK's smear of up to half of it), not its own backoff,
    # whose floor is 0.25 s.
    assert len(sdk_waits) == 2 and all(0.05 <= wait <= 0.075 for wait in sdk_waits), sdk_waits
    assert pinecone_store.count("e1") == 3


def test_a_transient_500_is_retried_with_backoff(
    pinecone_standin: PineconeStandin, pinecone_store: PineconeVectorStore, sdk_waits: list[float]
) -> None:
    pinecone_store.upsert("e1", [record("e1", "f1", 0, unit(1))])
    pinecone_standin.fail_next(1, 500)
    (match,) = pinecone_store.query("e1", unit(1), top_k=1)
    assert match.id == vector_id("e1", "f1", 0)
    assert [r.status for r in pinecone_standin.requests_to(QUERY, status=None)] == [500, 200]
    # No Retry-After: one wait of the SDK's own backoff (0.25-0.75 s for a first retry).
    assert len(sdk_waits) == 1 and 0.25 <= sdk_waits[0] <= 0.75, sdk_waits


def test_a_failure_that_outlasts_the_retries_raises(
    pinecone_standin: PineconeStandin, pinecone_store: PineconeVectorStore
) -> None:
    pinecone_standin.fail_next(10, 503, retry_after=0)
    with pytest.raises(pinecone.ServiceError):
        pinecone_store.count("e1")
    pinecone_standin.clear_failures()
    # Bounded: the first attempt and the SDK's 3 retries.
    assert [r.status for r in pinecone_standin.requests_to(STATS, status=None)] == [503] * 4
    assert pinecone_store.count("e1") == 0  # and the store works again afterwards


def test_a_wrong_api_key_is_not_retried(
    pinecone_standin: PineconeStandin, make_store: Callable[..., PineconeVectorStore]
) -> None:
    store = make_store(api_key="wrong-key")
    with pytest.raises(pinecone.UnauthorizedError):
        store.count("e1")
    assert [(r.api_key, r.status) for r in pinecone_standin.requests] == [("wrong-key", 401)]


def test_check_configuration_errors(
    pinecone_standin: PineconeStandin, make_store: Callable[..., PineconeVectorStore]
) -> None:
    make_store().check_configuration()  # a complete configuration passes
    cases = [
        ({"api_key": ""}, "api_key is empty"),
        ({"api_key": "   "}, "api_key is empty"),
        ({"api_key": "key\n"}, "whitespace"),
        ({"index_host": ""}, "index_host is empty"),
        ({"upsert_batch_size": 0}, "upsert_batch_size"),
        ({"upsert_batch_size": 1001}, "upsert_batch_size"),
    ]
    for settings, message in cases:
        with pytest.raises(ValueError, match=message):
            make_store(**settings).check_configuration()
    with pytest.raises(ValueError, match="api_key is empty.*index_host is empty"):
        PineconeVectorStore(api_key="", index_host="").check_configuration()
    # Using an unconfigured store fails the same way, before any request is made.
    with pytest.raises(ValueError, match="api_key is empty"):
        make_store(api_key="").upsert("e1", [record("e1", "f", 0, unit(1))])
    with pytest.raises(ValueError, match="upsert_batch_size"):
        make_store(upsert_batch_size=5000).upsert("e1", [record("e1", "f", 0, unit(1))])
    assert pinecone_standin.requests == []


def test_bad_input_is_refused_before_any_request(
    pinecone_standin: PineconeStandin, pinecone_store: PineconeVectorStore
) -> None:
    with pytest.raises(ValueError, match="has 2 values"):
        pinecone_store.upsert("e1", [VectorRecord("a", unit(1), {}), VectorRecord("b", [1.0, 0.0], {})])
    with pytest.raises(ValueError, match="NaN"):
        pinecone_store.upsert("e1", [VectorRecord("a", [math.nan] * DIMENSION, {})])
    with pytest.raises(ValueError, match="namespace"):
        pinecone_store.upsert("", [record("e1", "f", 0, unit(1))])
    with pytest.raises(ValueError, match="namespace"):
        pinecone_store.delete_namespace("")  # never Pinecone's default namespace by accident
    with pytest.raises(ValueError, match="ASCII"):
        pinecone_store.count("ümlaut")
    with pytest.raises(ValueError, match="top_k"):
        pinecone_store.query("e1", unit(1), top_k=0)
    assert pinecone_store.upsert("e1", []) == 0
    assert pinecone_standin.requests == []
    # What only the index knows (its dimension) is the server's to refuse.
    with pytest.raises(pinecone.ApiError, match="dimension"):
        pinecone_store.upsert("e1", [VectorRecord("short", [1.0, 0.0], {})])


def test_works_as_a_dagster_resource(
    pinecone_standin: PineconeStandin, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STANDIN_PINECONE_KEY", API_KEY)

    @dg.asset
    def stored(vector_store: dg.ResourceParam[VectorStore]) -> int:
        vector_store.upsert("e1", [record("e1", "f", i, unit(1, i)) for i in range(4)])
        return vector_store.count("e1")

    # The secret reaches the adapter from the environment (EnvVar), never as plain config.
    resource = PineconeVectorStoreResource(api_key=dg.EnvVar("STANDIN_PINECONE_KEY"), index_host=pinecone_standin.url)
    result = dg.materialize([stored], resources={"vector_store": resource})
    assert result.success and result.output_for_node("stored") == 4
    assert sum(r.vector_count for r in pinecone_standin.requests_to(UPSERT)) == 4
    assert {r.api_key for r in pinecone_standin.requests} == {API_KEY}


# ---- a real index (opt-in) ----------------------------------------------------------------------

_REAL = {name: os.environ.get(name, "") for name in ("PINECONE_API_KEY", "PINECONE_INDEX_HOST")}


@pytest.mark.skipif(
    not all(_REAL.values()),
    reason="real Pinecone index: set PINECONE_API_KEY and PINECONE_INDEX_HOST (a dense cosine index) to run",
)
def test_against_a_real_pinecone_index() -> None:
    store = PineconeVectorStore(api_key=_REAL["PINECONE_API_KEY"], index_host=_REAL["PINECONE_INDEX_HOST"])
    namespace = f"expert-pipeline-test-{uuid.uuid4().hex[:12]}"
    dim = store.index.describe_index_stats().dimension or 8

    try:
        records = [record("e1", "f", i, unit(*([0.0] * i), 1.0, dim=dim)) for i in range(3)]
        assert store.upsert(namespace, records) == 3
        # Pinecone is eventually consistent: writes show after a while.
        wait_for("3 records to be counted", lambda: store.count(namespace) == 3, timeout=90, interval=2)
        wait_for("a query match", lambda: bool(store.query(namespace, records[1].values, top_k=1)),
                 timeout=90, interval=2)
        best = store.query(namespace, records[1].values, top_k=3)[0]
        assert best.id == records[1].id and best.score == pytest.approx(1.0, abs=1e-3)
        assert best.metadata["chunk_index"] == 1 and best.metadata["text"] == "chunk 1 of f"
        store.delete_ids(namespace, [records[0].id])
        wait_for("the delete to be counted", lambda: store.count(namespace) == 2, timeout=90, interval=2)
    finally:
        store.delete_namespace(namespace)
        store.delete_namespace(namespace)  # a second delete (nothing left) must not raise either
        store.close()
