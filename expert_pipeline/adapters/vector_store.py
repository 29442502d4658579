"""Where an expert's vectors live: the interface the pipeline uses, and an embedded LanceDB store.

Each expert has its own namespace (a Pinecone namespace in production; a LanceDB table here),
so deleting an expert is dropping one namespace and a query can never see another expert's
chunks. Vector ids are deterministic, so writing the same chunks again replaces them instead of
adding copies.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, PrivateAttr

from expert_pipeline.core.ports import MetadataValue, VectorMatch, VectorRecord, VectorStore, vector_id

__all__ = ["LanceDBVectorStore", "MetadataValue", "VectorMatch", "VectorRecord", "VectorStore", "vector_id"]

if TYPE_CHECKING:
    from lancedb.db import LanceDBConnection
    from lancedb.table import Table


log = logging.getLogger("expert_pipeline.adapters.vector_store")

# Metadata is stored as typed columns (not a JSON blob) so it can be filtered and read cheaply.
_STRING_FIELDS = ("expert_id", "file_id", "filename", "text")
_INT_FIELDS = ("page", "chunk_index", "page_end")
# page_end (the last page of a chunk spanning pages) came later: it is the last column, and
# tables written before it get it added (null) on their next write.
METADATA_FIELDS = ("expert_id", "file_id", "filename", "page", "chunk_index", "text", "page_end")

_PLAIN_NAMESPACE = re.compile(r"[a-z0-9][a-z0-9-]{0,127}")
_MAX_ENCODED_NAMESPACE_BYTES = 100
# Unindexed rows below this are searched flat (milliseconds) rather than folded into the index.
_REINDEX_MIN_ROWS = 256
# Big enough to keep each delete's filter expression small, however many ids are passed.
_DELETE_BATCH = 1000

# Guards creating the shared connection; module-level rather than a private attribute because
# a lock cannot be copied, and resource instances may be.
_CONNECT_LOCK = threading.Lock()


def table_name(namespace: str) -> str:
    """The LanceDB table that holds `namespace`.

    Expert ids (lowercase UUIDs) map to a readable "expert_<id>". Anything else (capitals,
    other punctuation, non-ASCII) is hex-encoded behind "expert_x_": table names become
    directory names, so they must not contain separators or "..", must stay distinct on
    case-insensitive file systems, and must map one-to-one with namespaces. The two forms cannot
    collide because the readable form never contains "_".
    """
    if _PLAIN_NAMESPACE.fullmatch(namespace):
        return f"expert_{namespace}"
    encoded = namespace.encode("utf-8")
    if not encoded:
        raise ValueError("namespace must not be empty")
    if len(encoded) > _MAX_ENCODED_NAMESPACE_BYTES:
        raise ValueError(f"namespace is too long ({len(encoded)} bytes): {namespace[:40]!r}...")
    return f"expert_x_{encoded.hex()}"


def namespace_of_table(name: str) -> str | None:
    """The namespace a table holds (the inverse of `table_name`); None for tables not named by it."""
    if name.startswith("expert_x_"):
        try:
            namespace = bytes.fromhex(name[len("expert_x_") :]).decode("utf-8")
        except ValueError:
            return None
        return namespace if namespace and table_name(namespace) == name else None
    if name.startswith("expert_"):
        namespace = name[len("expert_") :]
        return namespace if _PLAIN_NAMESPACE.fullmatch(namespace) else None
    return None


def _schema(dimensions: int) -> pa.Schema:
    return pa.schema(
        [
            pa.field("id", pa.string(), nullable=False),
            pa.field("vector", pa.list_(pa.float32(), dimensions), nullable=False),
            *(pa.field(name, pa.string()) for name in ("expert_id", "file_id", "filename")),
            pa.field("page", pa.int64()),
            pa.field("chunk_index", pa.int64()),
            pa.field("text", pa.string()),
            pa.field("page_end", pa.int64()),
        ]
    )


def _table_dimensions(table: Table) -> int:
    vector_type = table.schema.field("vector").type
    if not isinstance(vector_type, pa.FixedSizeListType):
        raise TypeError(f"table {table.name!r} was not written by this store (vector is {vector_type})")
    return vector_type.list_size


def _stored_fields(table: Table) -> list[str]:
    """The metadata columns `table` has (one written before page_end existed lacks it)."""
    names = set(table.schema.names)
    return [name for name in METADATA_FIELDS if name in names]


def _text_index_config() -> Any:
    from lancedb.index import FTS

    # LanceDB's native full-text index (BM25): simple tokenizer, lower case, accents folded,
    # English stop words and stemming. No positions: phrase queries are not used.
    return FTS(with_position=False)


def _refresh_text_index(table: Table) -> None:
    """Keep the full-text index on `text` current after a write.

    The index only makes keyword search fast: rows written since it was built are still found
    (searched flat), so it is created on the first write and folded forward (`optimize`, which
    also compacts the many small files of batched upserts) once the unindexed rows reach a
    quarter of the indexed ones, which keeps the work linear in the rows written. A failure
    here (another writer racing on the same table) costs speed, never results, so it is logged.
    """
    try:
        index = next(
            (i for i in table.list_indices() if i.index_type == "FTS" and i.columns == ["text"]), None
        )
        if index is None:
            table.create_index("text", config=_text_index_config(), replace=True)
            return
        stats = table.index_stats(index.name)
        if stats is not None and stats.num_unindexed_rows >= max(
            _REINDEX_MIN_ROWS, stats.num_indexed_rows // 4
        ):
            table.optimize()
    except Exception as exc:  # noqa: BLE001 - see the docstring: results stay correct without it
        log.warning(
            "full-text index of %s not refreshed (keyword search stays correct, slower): %s", table.name, exc
        )


def _metadata_value(name: str, value: Any) -> MetadataValue:
    if name in _INT_FIELDS:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"metadata {name!r} must be an integer, not {value!r}")
        return int(value)
    if not isinstance(value, str):
        raise TypeError(f"metadata {name!r} must be a string, not {value!r}")
    return value


def _to_arrow(records: Sequence[VectorRecord]) -> pa.Table:
    dimensions = len(records[0].values)
    if dimensions == 0:
        raise ValueError("vectors must not be empty")
    columns: dict[str, list[Any]] = {name: [] for name in METADATA_FIELDS}
    for record in records:
        if len(record.values) != dimensions:
            raise ValueError(
                f"record {record.id!r} has {len(record.values)} values; the batch has {dimensions}"
            )
        unknown = set(record.metadata) - set(METADATA_FIELDS)
        if unknown:
            # Rejected rather than dropped: silently losing metadata would only show up much
            # later, as a chat answer that cannot cite its source.
            raise ValueError(f"record {record.id!r} has unknown metadata {sorted(unknown)}")
        for name in METADATA_FIELDS:
            value = record.metadata.get(name)
            # Missing fields are stored as null (and left out again when read), not invented.
            columns[name].append(None if value is None else _metadata_value(name, value))
    flat = np.asarray([record.values for record in records], dtype=np.float32).reshape(-1)
    return pa.table(
        {
            "id": pa.array([record.id for record in records], pa.string()),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float32()), dimensions),
            **{name: pa.array(columns[name], pa.string()) for name in _STRING_FIELDS},
            **{name: pa.array(columns[name], pa.int64()) for name in _INT_FIELDS},
        },
        schema=_schema(dimensions),
    )


class LanceDBVectorStore(BaseModel):
    """Embedded LanceDB on local disk: one table per namespace under `uri`.

    Writes are transactional per table (Lance commits a new version atomically), and different
    namespaces are different tables in different directories, so concurrent writers to
    different experts never contend; concurrent writers to one expert are retried by Lance.
    """

    uri: str

    _connection: LanceDBConnection | None = PrivateAttr(default=None)

    @property
    def connection(self) -> LanceDBConnection:
        if self._connection is None:
            with _CONNECT_LOCK:
                if self._connection is None:
                    import lancedb

                    # Run workers and the status API are separate processes writing and reading
                    # the same tables; checking for newer versions on every read (a cheap
                    # manifest check on local disk) keeps count() exact right after another
                    # process's upsert. The default (never re-check) would serve stale counts.
                    connection = lancedb.connect(self.uri, read_consistency_interval=timedelta(0))
                    # A local path always gives the embedded connection (typed as the base class).
                    assert isinstance(connection, lancedb.db.LanceDBConnection)
                    self._connection = connection
        return self._connection

    def connect_soon(self) -> None:
        """Import lancedb and connect on a background thread: its import takes most of a second,
        which a run spends while its earlier stages wait on the extraction worker and the model."""
        threading.Thread(target=self._connect_quietly, name="lancedb-connect", daemon=True).start()

    def _connect_quietly(self) -> None:
        try:
            self.connection  # noqa: B018 - the property connects
        except Exception:  # the stage that needs it connects again and reports
            log.debug("LanceDB connection ahead of need failed", exc_info=True)

    def _open(self, namespace: str) -> Table | None:
        name = table_name(namespace)
        try:
            return self.connection.open_table(name)
        except ValueError:
            # lancedb reports a missing table as a plain ValueError; confirm it really is missing
            # (listing tables only on this rare path) instead of parsing the message.
            if name in self.connection:
                raise
            return None

    def _open_or_create(self, namespace: str, dimensions: int) -> Table:
        table = self._open(namespace)
        if table is None:
            # exist_ok: another worker may create the same table between our check and here.
            table = self.connection.create_table(
                table_name(namespace), schema=_schema(dimensions), exist_ok=True
            )
        if "page_end" not in table.schema.names:
            try:
                table.add_columns(pa.field("page_end", pa.int64()))
            except Exception:  # another writer may have added it first
                if "page_end" not in table.schema.names:
                    raise
        stored = _table_dimensions(table)
        if stored != dimensions:
            raise ValueError(f"namespace {namespace!r} holds {stored}-dimensional vectors, not {dimensions}")
        return table

    def upsert(self, namespace: str, records: Sequence[VectorRecord]) -> int:
        if not records:
            return 0
        # merge_insert's behaviour is undefined when one batch holds an id twice; the last
        # record for an id wins, as it would with two separate upserts.
        unique = list({record.id: record for record in records}.values())
        data = _to_arrow(unique)
        table = self._open_or_create(namespace, len(unique[0].values))
        (table.merge_insert("id").when_matched_update_all().when_not_matched_insert_all().execute(data))
        _refresh_text_index(table)
        return len(unique)

    def count(self, namespace: str) -> int:
        table = self._open(namespace)
        return 0 if table is None else table.count_rows()

    def query(self, namespace: str, vector: Sequence[float], top_k: int = 5) -> list[VectorMatch]:
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, not {top_k}")
        table = self._open(namespace)
        if table is None:
            return []
        dimensions = _table_dimensions(table)
        if len(vector) != dimensions:
            raise ValueError(
                f"query has {len(vector)} values; namespace {namespace!r} holds {dimensions}-dimensional vectors"
            )
        # No ANN index is built: an expert's table holds thousands of chunks, and a flat scan
        # is exact and takes milliseconds below ~100k rows. An IVF index would need training
        # data (hundreds of rows per partition), go stale after every upsert, and trade recall
        # for speed that is not needed at this size.
        # "_distance" is selected explicitly: lancedb 0.40 still adds it to a projection on its
        # own but warns that it will stop doing so.
        from lancedb.query import LanceVectorQueryBuilder

        search = table.search(np.asarray(vector, dtype=np.float32), vector_column_name="vector")
        assert isinstance(search, LanceVectorQueryBuilder)  # a vector in, a vector query out
        rows = (
            search.distance_type("cosine")
            .select(["id", *_stored_fields(table), "_distance"])
            .limit(top_k)
            .to_list()
        )
        return [
            VectorMatch(
                id=row["id"],
                # LanceDB's cosine distance is 1 - cosine similarity.
                score=1.0 - float(row["_distance"]),
                metadata={name: row[name] for name in METADATA_FIELDS if row.get(name) is not None},
            )
            for row in rows
        ]

    def keyword_query(
        self, namespace: str, text: str, top_k: int = 5, all_words: bool = False
    ) -> list[VectorMatch]:
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, not {top_k}")
        if not text.strip():
            return []
        table = self._open(namespace)
        if table is None:
            return []
        from lancedb.query import FullTextOperator, MatchQuery

        operator = FullTextOperator.AND if all_words else FullTextOperator.OR

        # A MatchQuery, not a query string: the user's words are never parsed as query syntax
        # (quotes, AND/OR, parentheses). Rows not yet in the index are searched too (flat).
        rows = (
            # (mypy reads its pydantic fields with defaults as required)
            table.search(MatchQuery(text, "text", operator=operator), query_type="fts")  # type: ignore[call-arg]
            .select(["id", *_stored_fields(table), "_score"])
            .limit(top_k)
            .to_list()
        )
        return [
            VectorMatch(
                id=row["id"],
                score=float(row["_score"]),
                metadata={name: row[name] for name in METADATA_FIELDS if row.get(name) is not None},
            )
            for row in rows
        ]

    def delete_namespace(self, namespace: str) -> None:
        self.connection.drop_table(table_name(namespace), ignore_missing=True)

    def delete_ids(self, namespace: str, ids: Sequence[str]) -> None:
        if not ids:
            return
        table = self._open(namespace)
        if table is None:
            return
        from lancedb.expr import col, lit

        unique = list(dict.fromkeys(ids))
        for start in range(0, len(unique), _DELETE_BATCH):
            # An expression, not an SQL string: ids are never quoted or escaped by hand.
            table.delete(col("id").isin([lit(i) for i in unique[start : start + _DELETE_BATCH]]))

    def list_namespaces(self) -> list[str]:
        names: list[str] = []
        page_token: str | None = None
        while True:
            page = self.connection.list_tables(page_token=page_token)
            names.extend(page.tables)
            page_token = page.page_token
            if not page_token:
                break
        return sorted(ns for ns in (namespace_of_table(name) for name in names) if ns is not None)

    def modified_at(self, namespace: str) -> datetime | None:
        table = self._open(namespace)
        if table is None:
            return None
        versions = table.list_versions()
        if not versions:
            return None
        stamp = max(version["timestamp"] for version in versions)
        # Lance reports naive local time; astimezone() reads a naive value as local time.
        return stamp.astimezone(UTC)
