"""Experts' vectors in a Pinecone index (one namespace per expert), behind the `VectorStore` protocol.

Uses the `pinecone` SDK's (10.x) REST data plane on one index, reached by its host
(`Pinecone(api_key=...).index(host=...)`, so no control-plane lookup is made). The index must be a
dense index created with `dimension`/`metric="cosine"`: `query` returns Pinecone's score as the
cosine similarity. Calls and endpoints (pinecone 10.2, header `X-Pinecone-Api-Version: 2026-07`):

* `upsert`           -> `Index.upsert(vectors=[...], namespace=ns)`  POST /vectors/upsert
* `count`            -> `Index.describe_index_stats()`                POST /describe_index_stats
* `query`            -> `Index.query(vector=..., top_k=..., namespace=ns, include_metadata=True)`
                                                                      POST /query
* `delete_namespace` -> `Index.delete(delete_all=True, namespace=ns)` POST /vectors/delete
* `delete_ids`       -> `Index.delete(ids=[...], namespace=ns)`       POST /vectors/delete
* `list_namespaces`  -> `Index.list_namespaces()`                     GET /namespaces (paged);
                        `describe_index_stats` where that API is missing (older/pod indexes)
* `keyword_query`    -> `Index.list(namespace=ns)` + `Index.fetch(ids=[...], namespace=ns)`
                                                                      GET /vectors/list, /vectors/fetch

Keyword search (BM25) is kept beside the index, in this process: the chunk texts stored in the
records' metadata are read once (list the ids, fetch them 100 at a time) into an in-memory
`KeywordIndex` per namespace, rebuilt when the namespace's record count changes, after
KEYWORD_INDEX_MAX_AGE_SECONDS, or after a write through this store. Pinecone's own keyword
route (sparse vectors) needs a dotproduct index or a second, sparse index; reading the texts
needs neither, and an expert's few thousand chunks build in well under a second.

Limits kept here (Pinecone's documented data-plane limits):

* An upsert request carries at most 1,000 records and 2 MB. Records are packed greedily into
  requests of at most `upsert_batch_size` records and `UPSERT_REQUEST_BUDGET_BYTES`; each
  record's size is measured by serialising it with orjson, the encoder the SDK itself sends the
  body with (`pinecone._internal.http_client._encode_json`), so the estimate is the wire size.
* Metadata is at most 40 KB per record: an over-long `text` is truncated (see `_fit_metadata`).
* A delete by ids carries at most 1,000 ids.

Retries: the SDK's REST transport (`_RetryTransport` in `pinecone/_internal/http_client.py`)
retries every data-plane request on 408, 429, 500, 502, 503 and 504 and on connection errors, 3
times after the first attempt, waiting a decorrelated-jitter backoff (from 0.25 s, at most 60 s)
or the server's `Retry-After`. In 10.2 that policy is fixed for the REST `Index`:
`Pinecone(retry_config=...)` reaches only the control plane and gRPC (the `index()` factory does
not pass it on, and `Index()` has no such argument). Upserts (by id) and deletes are idempotent,
so retrying them is safe; nothing is retried again here. A failure that outlasts the SDK's
retries raises the SDK's error (`RateLimitError`, `ServiceError`, ... all `pinecone.ApiError`).

`count` reads `describe_index_stats`, which on serverless indexes lags writes by a few seconds.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import orjson  # a dependency of pinecone>=10; the encoder its HTTP client sends bodies with
from pydantic import BaseModel, PrivateAttr

from expert_pipeline.core.ports import MetadataValue, VectorMatch, VectorRecord
from expert_pipeline.retrieval.keyword import KeywordIndex

if TYPE_CHECKING:
    from pinecone import Index, Pinecone

__all__ = [
    "DELETE_BATCH_SIZE",
    "MAX_METADATA_BYTES",
    "MAX_RECORDS_PER_UPSERT",
    "MAX_UPSERT_REQUEST_BYTES",
    "METADATA_BUDGET_BYTES",
    "UPSERT_REQUEST_BUDGET_BYTES",
    "PineconeVectorStore",
    "plan_upsert_batches",
    "upsert_request_bytes",
]

log = logging.getLogger(__name__)

# Pinecone's limits for one upsert request.
MAX_RECORDS_PER_UPSERT = 1000
MAX_UPSERT_REQUEST_BYTES = 2_000_000  # "2 MB", read as decimal: the smaller reading is the safe one
# What requests are packed to: a little below the limit, in case a future SDK adds a field or two
# to the body that is not measured here.
UPSERT_REQUEST_BUDGET_BYTES = 1_950_000
# Pinecone's limit on one record's metadata, and what metadata is cut to (headroom for the
# server measuring it slightly differently from orjson's compact JSON).
MAX_METADATA_BYTES = 40 * 1024
METADATA_BUDGET_BYTES = 40_000
# Pinecone deletes at most 1,000 ids per request.
DELETE_BATCH_SIZE = 1000
# Ids per fetch request: they travel in the URL's query string, which servers cap at ~8-16 KB.
FETCH_BATCH_SIZE = 100
# How long a namespace's keyword index is trusted when its record count has not changed (a
# re-ingest can replace texts under the same ids, from another process).
KEYWORD_INDEX_MAX_AGE_SECONDS = 60.0
# Namespaces whose keyword index is kept in memory at once (least recently used are dropped).
KEYWORD_INDEX_CACHE_SIZE = 16
# Pinecone's namespace rules (the SDK checks them only for its own `delete_namespace`).
_MAX_NAMESPACE_LENGTH = 512
# Pinecone stores every metadata number as a 64-bit float; these come back as ints.
_INTEGER_FIELDS = frozenset({"page", "chunk_index", "page_end"})

# Guards creating and closing the shared SDK client; module-level rather than a private attribute
# because a lock cannot be copied, and resource instances may be (Dagster copies them).
_CLIENT_LOCK = threading.Lock()


@dataclass(frozen=True)
class _KeywordEntry:
    index: KeywordIndex
    metadata: dict[str, dict[str, MetadataValue]]
    record_count: int
    built_at: float


class PineconeVectorStore(BaseModel):
    """A Pinecone index as the pipeline's `VectorStore`; each expert is one namespace.

    `index_host` is the index's data-plane host, e.g. "my-index-abc123.svc.aped-4627-b74a.pinecone.io"
    (shown in the Pinecone console, or `pc.indexes.describe(name).host`); a bare host means https.
    Usable without Dagster: `PineconeVectorStore(api_key=..., index_host=...)`. The SDK client is
    created on first use and reused (it is thread-safe: one httpx connection pool).
    """

    api_key: str
    index_host: str
    upsert_batch_size: int = 200

    _pinecone: Any = PrivateAttr(default=None)
    _index: Any = PrivateAttr(default=None)
    _keyword_indexes: OrderedDict[str, _KeywordEntry] = PrivateAttr(default_factory=OrderedDict)

    # ---- the VectorStore interface -----------------------------------------------------------

    def upsert(self, namespace: str, records: Sequence[VectorRecord]) -> int:
        """Insert or replace `records` by id; the number of records Pinecone reports written.

        Several records with one id: the last one wins (as two separate upserts would).
        """
        _check_namespace(namespace)
        if not records:
            return 0
        unique = list({record.id: record for record in records}.values())
        wire = _wire_records(unique)
        self._keyword_indexes.pop(namespace, None)
        index = self.index
        written = 0
        for batch in plan_upsert_batches(wire, namespace, max_records=self._batch_size()):
            response = index.upsert(vectors=batch, namespace=namespace, show_progress=False)
            written += response.upserted_count
        return written

    def count(self, namespace: str) -> int:
        """Records in `namespace` (0 if it does not exist), from describe_index_stats.

        Pinecone's stats are eventually consistent: a write may take a few seconds to show.
        """
        _check_namespace(namespace)
        stats = self.index.describe_index_stats()
        summary = stats.namespaces.get(namespace)
        return 0 if summary is None else int(summary.vector_count)

    def query(self, namespace: str, vector: Sequence[float], top_k: int = 5) -> list[VectorMatch]:
        """The `top_k` records nearest to `vector`, best first, with their metadata."""
        _check_namespace(namespace)
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise ValueError(f"top_k must be at least 1, not {top_k!r}")
        values = _plain_floats(vector, what="the query vector")
        from pinecone import NotFoundError

        try:
            response = self.index.query(
                vector=values, top_k=top_k, namespace=namespace, include_metadata=True
            )
        except NotFoundError:
            # Serverless answers a query on a missing namespace with no matches; should any
            # deployment answer 404 instead, that is still "nothing stored here".
            return []
        return [
            VectorMatch(id=match.id, score=float(match.score), metadata=_from_pinecone(match.metadata))
            for match in response.matches
        ]

    def keyword_query(
        self, namespace: str, text: str, top_k: int = 5, all_words: bool = False
    ) -> list[VectorMatch]:
        """The `top_k` records whose metadata `text` best matches `text` by BM25, best first."""
        _check_namespace(namespace)
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise ValueError(f"top_k must be at least 1, not {top_k!r}")
        if not text.strip():
            return []
        entry = self._keyword_entry(namespace)
        return [
            VectorMatch(id=record_id, score=score, metadata=entry.metadata[record_id])
            for record_id, score in entry.index.search(text, top_k, all_words=all_words)
        ]

    def _keyword_entry(self, namespace: str) -> _KeywordEntry:
        """The namespace's keyword index: the cached one while still current, else built anew."""
        record_count = self.count(namespace)
        cached = self._keyword_indexes.get(namespace)
        if (
            cached is not None
            and cached.record_count == record_count
            and time.monotonic() - cached.built_at < KEYWORD_INDEX_MAX_AGE_SECONDS
        ):
            self._keyword_indexes.move_to_end(namespace)
            return cached
        metadata = self._all_metadata(namespace) if record_count else {}
        entry = _KeywordEntry(
            index=KeywordIndex.build((i, str(m.get("text") or "")) for i, m in metadata.items()),
            metadata=metadata,
            record_count=record_count,
            built_at=time.monotonic(),
        )
        self._keyword_indexes[namespace] = entry
        self._keyword_indexes.move_to_end(namespace)
        while len(self._keyword_indexes) > KEYWORD_INDEX_CACHE_SIZE:
            self._keyword_indexes.popitem(last=False)
        return entry

    def _all_metadata(self, namespace: str) -> dict[str, dict[str, MetadataValue]]:
        """Every record's metadata in `namespace`, by id (ids listed, then fetched in batches)."""
        from pinecone import NotFoundError

        index = self.index
        try:
            ids = [
                item.id
                for page in index.list(namespace=namespace, limit=100)
                for item in page.vectors
                if item.id
            ]
        except NotFoundError:
            return {}
        metadata: dict[str, dict[str, MetadataValue]] = {}
        for start in range(0, len(ids), FETCH_BATCH_SIZE):
            response = index.fetch(ids=ids[start : start + FETCH_BATCH_SIZE], namespace=namespace)
            for record_id, vector in response.vectors.items():
                metadata[record_id] = _from_pinecone(vector.metadata)
        return metadata

    def delete_namespace(self, namespace: str) -> None:
        """Delete every record in `namespace`; a namespace that does not exist is fine."""
        _check_namespace(namespace)
        self._keyword_indexes.pop(namespace, None)
        from pinecone import NotFoundError

        try:
            self.index.delete(delete_all=True, namespace=namespace)
        except NotFoundError:
            # Pinecone answers 404 {"code": 5, "message": "Namespace not found"} when there is
            # nothing to delete; the caller's goal (no vectors left there) already holds.
            log.debug("Pinecone namespace %r did not exist; nothing to delete", namespace)

    def delete_ids(self, namespace: str, ids: Sequence[str]) -> None:
        """Delete the records with these ids (ids not stored are ignored), 1,000 per request."""
        _check_namespace(namespace)
        if isinstance(ids, str):
            raise TypeError("delete_ids takes a sequence of ids, not one string")
        unique = list(dict.fromkeys(ids))
        if not unique:
            return
        self._keyword_indexes.pop(namespace, None)
        from pinecone import NotFoundError

        index = self.index
        for start in range(0, len(unique), DELETE_BATCH_SIZE):
            try:
                index.delete(ids=unique[start : start + DELETE_BATCH_SIZE], namespace=namespace)
            except NotFoundError:
                return  # the namespace does not exist, so none of the ids are stored

    def list_namespaces(self) -> list[str]:
        """Every namespace in the index except the default one (never an expert's)."""
        from pinecone import ApiError

        try:
            names = [ns.name for page in self.index.list_namespaces() for ns in page.namespaces]
        except ApiError as exc:
            if getattr(exc, "status_code", None) not in (400, 404, 405, 501):
                raise
            # No namespaces API on this index: the stats name every namespace that holds vectors.
            log.info("Pinecone list_namespaces unavailable (%s); using describe_index_stats", exc)
            names = list(self.index.describe_index_stats().namespaces)
        return sorted({name for name in names if name and name != "__default__"})

    def modified_at(self, namespace: str) -> datetime | None:
        """Always None: Pinecone keeps no write time for a namespace."""
        _check_namespace(namespace)
        return None

    # ---- configuration and the client --------------------------------------------------------

    def check_configuration(self) -> None:
        """Raise ValueError naming what is missing or wrong (no request is made)."""
        problems = []
        if not self.api_key or not self.api_key.strip():
            problems.append("api_key is empty: set it, e.g. api_key=dg.EnvVar('PINECONE_API_KEY')")
        elif self.api_key != self.api_key.strip():
            problems.append("api_key has leading or trailing whitespace (a newline from a file?)")
        if not self.index_host or not self.index_host.strip():
            problems.append(
                "index_host is empty: set it to the index's host (Pinecone console, or "
                "pc.indexes.describe(name).host), e.g. index_host=dg.EnvVar('PINECONE_INDEX_HOST')"
            )
        if not 1 <= self.upsert_batch_size <= MAX_RECORDS_PER_UPSERT:
            problems.append(
                f"upsert_batch_size must be between 1 and {MAX_RECORDS_PER_UPSERT}, "
                f"not {self.upsert_batch_size}"
            )
        if problems:
            raise ValueError("PineconeVectorStore is not configured: " + "; ".join(problems))

    @property
    def index(self) -> Index:
        """The SDK's data-plane client for the index (created on first use, then reused)."""
        if self._index is None:
            with _CLIENT_LOCK:
                if self._index is None:
                    self.check_configuration()
                    from pinecone import Pinecone

                    client: Pinecone = Pinecone(api_key=self.api_key, source_tag="expert_pipeline")
                    self._index = client.index(host=self.index_host.strip())
                    self._pinecone = client
        return self._index

    def close(self) -> None:
        """Close the SDK's connection pools; the next call opens new ones."""
        with _CLIENT_LOCK:
            index, client = self._index, self._pinecone
            self._index = self._pinecone = None
        if index is not None:
            index.close()
        if client is not None:
            client.close()

    def _batch_size(self) -> int:
        if not 1 <= self.upsert_batch_size <= MAX_RECORDS_PER_UPSERT:
            self.check_configuration()  # raises, naming the setting
        return self.upsert_batch_size


# ---- helpers (module-level so they can be tested without a server) ---------------------------


def upsert_request_bytes(records: Sequence[dict[str, Any]], namespace: str) -> int:
    """The size of the upsert body the SDK sends for `records` (wire dicts) in `namespace`."""
    return len(orjson.dumps(_upsert_body(list(records), namespace)))


def plan_upsert_batches(
    records: Sequence[dict[str, Any]],
    namespace: str,
    *,
    max_records: int = MAX_RECORDS_PER_UPSERT,
    max_bytes: int = UPSERT_REQUEST_BUDGET_BYTES,
) -> list[list[dict[str, Any]]]:
    """Split wire records into consecutive upsert requests of <= max_records and <= max_bytes.

    The body is `{"vectors":[r1,r2,...],"namespace":"ns"}`, so its size is the empty body's plus
    each record's encoding plus one comma between records; records keep their order.
    """
    max_records = min(max_records, MAX_RECORDS_PER_UPSERT)
    envelope = len(orjson.dumps(_upsert_body([], namespace)))
    batches: list[list[dict[str, Any]]] = []
    current: list[dict[str, Any]] = []
    current_bytes = envelope
    for record in records:
        size = len(orjson.dumps(record))
        if envelope + size > max_bytes:
            raise ValueError(
                f"record {record['id']!r} alone is {size:,} bytes encoded, more than one upsert "
                f"request may carry ({max_bytes:,} bytes)"
            )
        added = size + (1 if current else 0)
        if current and (len(current) >= max_records or current_bytes + added > max_bytes):
            batches.append(current)
            current, current_bytes, added = [], envelope, size
        current.append(record)
        current_bytes += added
    if current:
        batches.append(current)
    return batches


def _upsert_body(records: list[dict[str, Any]], namespace: str) -> dict[str, Any]:
    # The exact shape `Index.upsert` builds (index/__init__.py `_upsert_one_batch`).
    body: dict[str, Any] = {"vectors": records}
    if namespace:
        body["namespace"] = namespace
    return body


def _check_namespace(namespace: str) -> None:
    # An empty namespace is Pinecone's default namespace: never an expert's, and deleting it
    # by accident would be costly, so it is refused like any other invalid name.
    if not isinstance(namespace, str) or not namespace:
        raise ValueError("namespace must be a non-empty string")
    if len(namespace) > _MAX_NAMESPACE_LENGTH:
        raise ValueError(f"namespace is too long ({len(namespace)} characters): {namespace[:40]!r}...")
    if not namespace.isascii() or "\x00" in namespace:
        raise ValueError(f"Pinecone namespaces must be ASCII without NUL characters: {namespace!r}")


def _plain_floats(values: Sequence[float], *, what: str) -> list[float]:
    """`values` as a list of finite Python floats (numpy scalars and ints converted)."""
    floats = [float(v) for v in values]
    if not floats:
        raise ValueError(f"{what} is empty")
    if not all(math.isfinite(v) for v in floats):
        raise ValueError(f"{what} contains NaN or infinite values")
    return floats


def _wire_records(records: Sequence[VectorRecord]) -> list[dict[str, Any]]:
    """Records as the dicts the SDK sends (`{"id", "values", "metadata"}`), checked and fitted."""
    dimensions = len(records[0].values)
    wire: list[dict[str, Any]] = []
    for record in records:
        if len(record.values) != dimensions:
            raise ValueError(
                f"record {record.id!r} has {len(record.values)} values; the batch has {dimensions}"
            )
        values = _plain_floats(record.values, what=f"record {record.id!r}'s vector")
        item: dict[str, Any] = {"id": record.id, "values": values}
        if record.metadata:
            item["metadata"] = _fit_metadata(record.id, record.metadata)
        wire.append(item)
    return wire


def _fit_metadata(record_id: str, metadata: dict[str, MetadataValue]) -> dict[str, MetadataValue]:
    """`metadata`, with `text` truncated if needed so the whole fits Pinecone's 40 KB limit.

    Pinecone rejects a record whose metadata is over 40 KB, which would fail the whole upsert.
    Chunk texts are normally a few KB, so this only bites on a pathological chunk (one huge
    "word", a table flattened into one chunk); then the stored `text` is cut to the longest
    prefix that fits METADATA_BUDGET_BYTES once JSON-encoded, and a warning is logged. The vector
    itself still embeds the whole chunk; only the text shown as the source is shortened.
    The cut is made on a character (code point) boundary of the Python string, so the UTF-8 that
    is sent never ends in a partial multi-byte character. The measure is the JSON encoding, not
    raw UTF-8, because quotes, backslashes and control characters grow when escaped.
    """
    fitted = dict(metadata)
    if len(orjson.dumps(fitted)) <= METADATA_BUDGET_BYTES:
        return fitted
    text = fitted.get("text")
    fitted["text"] = ""
    room = METADATA_BUDGET_BYTES - len(orjson.dumps(fitted))  # bytes left inside the quotes
    if not isinstance(text, str) or room < 0:
        raise ValueError(
            f"record {record_id!r}: metadata is {len(orjson.dumps(metadata)):,} bytes encoded, "
            f"over Pinecone's {MAX_METADATA_BYTES:,}-byte limit, even without its text"
        )
    # The longest prefix whose escaped form fits `room`; each character costs at least one byte,
    # so no more than `room` characters can fit. Escaped length only grows with the prefix, so a
    # binary search finds it in ~16 encodings.
    low, high = 0, min(len(text), room)
    while low < high:
        mid = (low + high + 1) // 2
        if len(orjson.dumps(text[:mid])) - 2 <= room:
            low = mid
        else:
            high = mid - 1
    fitted["text"] = text[:low]
    log.warning(
        "record %r: metadata text cut from %d to %d characters to fit Pinecone's %d-byte metadata limit",
        record_id,
        len(text),
        low,
        MAX_METADATA_BYTES,
    )
    return fitted


def _from_pinecone(metadata: dict[str, Any] | None) -> dict[str, MetadataValue]:
    """Metadata as stored by the pipeline: Pinecone returns every number as a float."""
    if not metadata:
        return {}
    result: dict[str, MetadataValue] = {}
    for key, value in metadata.items():
        if key in _INTEGER_FIELDS and isinstance(value, float) and value.is_integer():
            value = int(value)
        result[key] = value
    return result
