"""A small stand-in for one Pinecone index's data plane: real HTTP on 127.0.0.1, Pinecone's JSON.

It serves exactly the REST endpoints the `pinecone` SDK (10.2) calls for PineconeVectorStore:

* `POST /vectors/upsert`       {"vectors": [{"id", "values", "metadata"?}], "namespace"?}
                               -> {"upsertedCount": n}
* `POST /query`                {"topK", "vector", "namespace"?, "includeMetadata", "includeValues"}
                               -> {"matches": [{"id", "score", "values", "metadata"?}],
                                   "namespace", "usage": {"readUnits"}}   (cosine similarity)
* `POST /describe_index_stats` {} -> {"namespaces": {ns: {"vectorCount"}}, "dimension",
                                      "indexFullness", "totalVectorCount", "metric", "vectorType"}
* `GET /namespaces`            ?prefix&limit&paginationToken -> {"namespaces": [{"name", "record_count"}],
                               "pagination": {"next"} | absent, "total_count"} (names sorted; pages
                               of `limit`, default `namespace_page_size`; record_count as a string,
                               as the real API sends it)
* `GET /vectors/list`          ?namespace&prefix&limit&paginationToken -> {"vectors": [{"id"}],
                               "pagination": {"next"} | absent, "namespace", "usage"} (ids sorted;
                               limit 1..100, default 100; a missing namespace lists nothing)
* `GET /vectors/fetch`         ?ids=..&ids=..&namespace -> {"vectors": {id: {"id", "values",
                               "metadata"?}}, "namespace", "usage"} (ids not stored are left out)
* `POST /vectors/delete`       {"namespace", "ids" | "deleteAll" | "filter"} -> {}; a namespace
                               that does not exist is 404 {"code": 5, "message": "Namespace not found"}

Namespaces live in memory; a namespace exists while it holds records (as on serverless). Like the
real service it enforces: the `Api-Key` header (401), at most 1,000 vectors and 2 MB per upsert
(400 / 413), at most 40 KB of metadata per record (400), one dimension per index (400), at most
1,000 ids per delete (400). Metadata numbers are stored as floats and come back as floats (3 -> 3.0),
as Pinecone stores every metadata number as a 64-bit float. Errors use Pinecone's data-plane error
body {"code": <grpc code>, "message": ..., "details": []}.

It records every request (`.requests`: path, the `X-Pinecone-Api-Version` and `Api-Key` headers,
body size, number of vectors / ids, status) and can be told to answer the next N requests with an
error status (`fail_next`), optionally with a `Retry-After` header.

Fixtures: `pinecone_standin` (a running server, dimension 8) and `pinecone_store` (a
PineconeVectorStore pointed at it, api key "test-key").
"""

from __future__ import annotations

import json
import threading
import uuid
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from tests.threaded_server import ThreadedServer
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from expert_pipeline.adapters.pinecone_vector_store import PineconeVectorStore

API_KEY = "test-key"
DIMENSION = 8
MAX_UPSERT_VECTORS = 1000
MAX_REQUEST_BYTES = 2_000_000
MAX_METADATA_BYTES = 40 * 1024
MAX_DELETE_IDS = 1000
MAX_FETCH_IDS = 1000
MAX_TOP_K = 10_000

# gRPC status codes, which Pinecone's data plane puts in its error bodies.
_GRPC_CODES = {400: 3, 401: 16, 403: 7, 404: 5, 413: 3, 429: 8, 500: 13, 502: 14, 503: 14, 504: 4}


@dataclass
class RecordedRequest:
    method: str
    path: str
    api_version: str | None
    api_key: str | None
    body_bytes: int
    body: Any
    status: int = 0  # filled in when answered

    @property
    def vector_count(self) -> int:
        """Vectors in an upsert body (0 for other requests)."""
        vectors = self.body.get("vectors") if isinstance(self.body, dict) else None
        return len(vectors) if isinstance(vectors, list) else 0

    @property
    def ids(self) -> list[str]:
        """The ids an upsert writes or a delete names."""
        if not isinstance(self.body, dict):
            return []
        if isinstance(self.body.get("vectors"), list):
            return [v.get("id") for v in self.body["vectors"] if isinstance(v, dict)]
        return list(self.body.get("ids") or [])

    @property
    def namespace(self) -> str:
        return (self.body or {}).get("namespace", "") if isinstance(self.body, dict) else ""


@dataclass
class StoredVector:
    values: np.ndarray
    metadata: dict[str, Any] | None


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"code": _GRPC_CODES.get(status, 2), "message": message, "details": []}
    return JSONResponse(body, status_code=status, headers=headers)


def _metadata_error(metadata: Any) -> str | None:
    """Why Pinecone would reject this metadata, or None."""
    if not isinstance(metadata, dict):
        return "metadata must be an object"
    for key, value in metadata.items():
        if isinstance(value, bool) or isinstance(value, str):
            continue
        if isinstance(value, (int, float)):
            continue
        if isinstance(value, list) and all(isinstance(item, str) for item in value):
            continue
        return (
            f"Metadata value must be a string, number, boolean or list of strings, got "
            f"'{json.dumps(value)}' for field '{key}'"
        )
    size = len(json.dumps(metadata, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))
    if size > MAX_METADATA_BYTES:
        return f"Metadata size is {size} bytes, which exceeds the limit of {MAX_METADATA_BYTES} bytes per vector"
    return None


def _as_stored(metadata: dict[str, Any]) -> dict[str, Any]:
    # Pinecone keeps every metadata number as a 64-bit float.
    return {
        k: float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v
        for k, v in metadata.items()
    }


@dataclass
class PineconeStandin:
    api_key: str = API_KEY
    dimension: int | None = DIMENSION  # None: fixed by the first upsert
    requests: list[RecordedRequest] = field(default_factory=list)
    namespaces: dict[str, dict[str, StoredVector]] = field(default_factory=dict)
    _failures: deque[tuple[int, float | None]] = field(default_factory=deque)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _http: ThreadedServer | None = None
    port: int = 0
    namespace_page_size: int = 100  # GET /namespaces page size when the request gives no limit

    # ---- control -----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The index host to give the SDK, like https://my-index-abc.svc.pinecone.io."""
        return f"http://127.0.0.1:{self.port}"

    def fail_next(self, n: int, status: int, retry_after: float | None = None) -> None:
        """Answer the next `n` requests (any endpoint) with `status`, with Retry-After if given."""
        with self._lock:
            self._failures.extend([(status, retry_after)] * n)

    def clear_failures(self) -> None:
        with self._lock:
            self._failures.clear()

    def requests_to(self, path: str, status: int | None = 200) -> list[RecordedRequest]:
        """The requests to `path`, answered with `status` (None: any status)."""
        with self._lock:
            return [r for r in self.requests if r.path == path and (status is None or r.status == status)]

    def clear_requests(self) -> None:
        with self._lock:
            self.requests.clear()

    def stored_count(self, namespace: str) -> int:
        with self._lock:
            return len(self.namespaces.get(namespace, {}))

    # ---- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> PineconeStandin:
        self._http = ThreadedServer(self._app(), name="the Pinecone stand-in", lifespan="off").__enter__()
        self.port = self._http.port
        return self

    def __exit__(self, *_: object) -> None:
        assert self._http is not None
        self._http.__exit__()

    # ---- the HTTP side -----------------------------------------------------------------------

    def _app(self) -> FastAPI:
        app = FastAPI()
        handlers = {
            "/vectors/upsert": self._upsert,
            "/query": self._query,
            "/describe_index_stats": self._describe_index_stats,
            "/vectors/delete": self._delete,
            "/namespaces": self._list_namespaces,
            "/vectors/list": self._list_vectors,
            "/vectors/fetch": self._fetch,
        }
        get_paths = {"/namespaces", "/vectors/list", "/vectors/fetch"}

        async def dispatch(request: Request) -> JSONResponse:
            raw = await request.body()
            try:
                body = json.loads(raw) if raw else {}
            except ValueError:
                body = None
            if request.method == "GET":  # GET endpoints take their arguments in the query string
                params = request.query_params
                body = {k: params.getlist(k) if k == "ids" else v for k, v in params.items()}
            record = RecordedRequest(
                method=request.method,
                path=request.url.path,
                api_version=request.headers.get("x-pinecone-api-version"),
                api_key=request.headers.get("api-key"),
                body_bytes=len(raw),
                body=body,
            )
            with self._lock:
                self.requests.append(record)
                failure = self._failures.popleft() if self._failures else None
                if failure is not None:
                    status, retry_after = failure
                    headers = {"retry-after": f"{retry_after:g}"} if retry_after is not None else None
                    message = ("Request failed. You've reached the rate limit of your index."
                               if status == 429 else f"stand-in failure ({status})")
                    response = _error(status, message, headers)
                elif record.api_key != self.api_key:
                    response = _error(401, "Invalid API Key")
                elif not isinstance(body, dict):
                    response = _error(400, "The request body is not a JSON object")
                elif len(raw) > MAX_REQUEST_BYTES:
                    response = _error(
                        413, f"Request size {len(raw)} bytes exceeds the maximum of {MAX_REQUEST_BYTES} bytes"
                    )
                else:
                    response = handlers[request.url.path](body)
                record.status = response.status_code
            response.headers["x-pinecone-request-id"] = uuid.uuid4().hex
            return response

        for path in handlers:
            app.add_api_route(path, dispatch, methods=["GET" if path in get_paths else "POST"])
        return app

    # Handlers run under self._lock.

    def _upsert(self, body: dict[str, Any]) -> JSONResponse:
        vectors = body.get("vectors")
        namespace = body.get("namespace", "")
        if not isinstance(vectors, list) or not vectors:
            return _error(400, "Invalid request: 'vectors' must be a non-empty list")
        if len(vectors) > MAX_UPSERT_VECTORS:
            return _error(
                400, f"Request contains {len(vectors)} vectors, exceeding the maximum of {MAX_UPSERT_VECTORS}"
            )
        parsed: dict[str, StoredVector] = {}
        for vector in vectors:
            vid, values = vector.get("id"), vector.get("values")
            if not isinstance(vid, str) or not vid or not vid.isascii() or len(vid) > 512:
                return _error(400, f"Invalid vector id: {vid!r}")
            if not isinstance(values, list) or not values or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in values
            ):
                return _error(400, f"Vector {vid} has invalid values")
            dimension = self.dimension if self.dimension is not None else len(values)
            if len(values) != dimension:
                return _error(
                    400, f"Vector dimension {len(values)} does not match the dimension of the index {dimension}"
                )
            metadata = vector.get("metadata")
            if metadata is not None:
                problem = _metadata_error(metadata)
                if problem:
                    return _error(400, problem)
            parsed[vid] = StoredVector(
                np.asarray(values, dtype=np.float32), None if metadata is None else _as_stored(metadata)
            )
        if self.dimension is None:
            self.dimension = len(vectors[0]["values"])
        self.namespaces.setdefault(namespace, {}).update(parsed)
        return JSONResponse({"upsertedCount": len(vectors)})

    def _query(self, body: dict[str, Any]) -> JSONResponse:
        top_k = body.get("topK")
        if not isinstance(top_k, int) or not 1 <= top_k <= MAX_TOP_K:
            return _error(400, f"topK must be between 1 and {MAX_TOP_K}")
        vector = body.get("vector")
        if not isinstance(vector, list) or not vector:
            return _error(400, "Invalid request: a dense 'vector' is required")
        if self.dimension is not None and len(vector) != self.dimension:
            return _error(
                400, f"Vector dimension {len(vector)} does not match the dimension of the index {self.dimension}"
            )
        namespace = body.get("namespace", "")
        stored = self.namespaces.get(namespace, {})
        query = np.asarray(vector, dtype=np.float32)
        scored = []
        query_norm = float(np.linalg.norm(query))
        for vid, item in stored.items():
            denominator = query_norm * float(np.linalg.norm(item.values))
            score = float(np.dot(query, item.values) / denominator) if denominator else 0.0
            scored.append((score, vid, item))
        scored.sort(key=lambda entry: (-entry[0], entry[1]))
        matches = []
        for score, vid, item in scored[:top_k]:
            match: dict[str, Any] = {
                "id": vid,
                "score": score,
                "values": item.values.tolist() if body.get("includeValues") else [],
            }
            if body.get("includeMetadata") and item.metadata is not None:
                match["metadata"] = item.metadata
            matches.append(match)
        return JSONResponse({"matches": matches, "namespace": namespace, "usage": {"readUnits": 1}})

    def _describe_index_stats(self, body: dict[str, Any]) -> JSONResponse:
        if body.get("filter"):
            return _error(400, "describe_index_stats does not support a filter on this index")
        namespaces = {
            (name or "__default__"): {"vectorCount": len(vectors)}
            for name, vectors in self.namespaces.items()
            if vectors
        }
        return JSONResponse(
            {
                "namespaces": namespaces,
                "dimension": self.dimension or 0,
                "indexFullness": 0.0,
                "totalVectorCount": sum(n["vectorCount"] for n in namespaces.values()),
                "metric": "cosine",
                "vectorType": "dense",
            }
        )

    def _list_namespaces(self, params: dict[str, Any]) -> JSONResponse:
        prefix = params.get("prefix", "")
        try:
            limit = int(params.get("limit", self.namespace_page_size))
            start = int(params.get("paginationToken", 0))
        except ValueError:
            return _error(400, "limit and paginationToken must be integers")
        if not 1 <= limit <= 100:
            return _error(400, "limit must be between 1 and 100")
        names = sorted(name for name, vectors in self.namespaces.items() if vectors and name.startswith(prefix))
        page = names[start : start + limit]
        body: dict[str, Any] = {
            "namespaces": [
                {"name": name or "__default__", "record_count": str(len(self.namespaces[name]))} for name in page
            ],
            "total_count": len(names),
        }
        if start + limit < len(names):
            body["pagination"] = {"next": str(start + limit)}
        return JSONResponse(body)

    def _list_vectors(self, params: dict[str, Any]) -> JSONResponse:
        namespace, prefix = params.get("namespace", ""), params.get("prefix", "")
        try:
            limit = int(params.get("limit", 100))
            start = int(params.get("paginationToken", 0))
        except ValueError:
            return _error(400, "limit and paginationToken must be integers")
        if not 1 <= limit <= 100:
            return _error(400, "limit must be between 1 and 100")
        ids = sorted(vid for vid in self.namespaces.get(namespace, {}) if vid.startswith(prefix))
        body: dict[str, Any] = {
            "vectors": [{"id": vid} for vid in ids[start : start + limit]],
            "namespace": namespace,
            "usage": {"readUnits": 1},
        }
        if start + limit < len(ids):
            body["pagination"] = {"next": str(start + limit)}
        return JSONResponse(body)

    def _fetch(self, params: dict[str, Any]) -> JSONResponse:
        ids, namespace = params.get("ids") or [], params.get("namespace", "")
        if not ids:
            return _error(400, "Invalid request: 'ids' must be a non-empty list")
        if len(ids) > MAX_FETCH_IDS:
            return _error(400, f"At most {MAX_FETCH_IDS} ids can be fetched per request")
        stored = self.namespaces.get(namespace, {})
        vectors: dict[str, Any] = {}
        for vid in ids:
            item = stored.get(vid)
            if item is not None:
                vectors[vid] = {"id": vid, "values": item.values.tolist()}
                if item.metadata is not None:
                    vectors[vid]["metadata"] = item.metadata
        return JSONResponse({"vectors": vectors, "namespace": namespace, "usage": {"readUnits": 1}})

    def _delete(self, body: dict[str, Any]) -> JSONResponse:
        namespace = body.get("namespace", "")
        ids, delete_all, filter_ = body.get("ids"), body.get("deleteAll", False), body.get("filter")
        if sum(bool(x) for x in (ids, delete_all, filter_)) != 1:
            return _error(400, "Exactly one of ids, deleteAll or filter must be given")
        if filter_:
            return _error(400, "Delete by metadata filter is not supported by this stand-in")
        if ids is not None and (not isinstance(ids, list) or len(ids) > MAX_DELETE_IDS):
            return _error(400, f"At most {MAX_DELETE_IDS} ids can be deleted per request")
        stored = self.namespaces.get(namespace)
        if not stored:
            return _error(404, "Namespace not found")
        if delete_all:
            del self.namespaces[namespace]
        else:
            for vid in ids:
                stored.pop(vid, None)
            if not stored:
                del self.namespaces[namespace]
        return JSONResponse({})


@pytest.fixture
def pinecone_standin() -> Iterator[PineconeStandin]:
    with PineconeStandin() as server:
        yield server


@pytest.fixture
def pinecone_store(pinecone_standin: PineconeStandin) -> Iterator[PineconeVectorStore]:
    store = PineconeVectorStore(api_key=API_KEY, index_host=pinecone_standin.url)
    yield store
    store.close()
