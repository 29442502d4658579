"""Every error is JSON `{"success": false, "error": "..."}` with the right status code.

A database outage becomes 503 with a message; nothing leaks a stack trace or a bare 500.
"""

from __future__ import annotations

import logging
import re

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import compile_path

from expert_pipeline.core.progress_service import InvalidProgressUpdate, ProgressNotFound

log = logging.getLogger(__name__)


def error_response(
    status_code: int, message: str, headers: dict[str, str] | None = None, **extra: object
) -> JSONResponse:
    return JSONResponse(
        status_code=status_code, content={"success": False, "error": message, **extra}, headers=headers
    )


# A multipart part without a filename (or with only the RFC 2231 `filename*` form, which the
# parser does not read) arrives as a text field; pydantic's own words for that name a Python class.
_NOT_A_FILE = "Expected UploadFile"
_NOT_A_FILE_MESSAGE = "not a file: every part named 'files' needs a filename in its Content-Disposition"


def _describe_validation(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path"))
        message = str(err.get("msg", "invalid"))
        if _NOT_A_FILE in message:
            message = _NOT_A_FILE_MESSAGE
        parts.append(f"{where or 'request'}: {message}")
    return "; ".join(parts) or "invalid request"


# Starlette's multipart parser stops at 1,000 files with a 400 of its own, before any route
# can apply the product's (lower) limit; that answer is restated as ours.
_PARSER_FILE_LIMIT = "Too many files."


_HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE")


def allowed_methods(app: FastAPI, path: str) -> list[str]:
    """Every method the OpenAPI document gives the paths that `path` matches.

    The router answers 405 from the first route whose path matched, so its `Allow` names that
    route's method alone, while `/api/experts/{id}` (say) is served by a GET and a DELETE route.
    The table of path patterns is built once, from the document the clients read.
    """
    table: list[tuple[re.Pattern[str], set[str]]] | None = getattr(app.state, "allow_table", None)
    if table is None:
        table = [
            (compile_path(template)[0], {m.upper() for m in operations if m.upper() in _HTTP_METHODS})
            for template, operations in app.openapi().get("paths", {}).items()
        ]
        app.state.allow_table = table
    methods: set[str] = set()
    for pattern, supported in table:
        if pattern.match(path):
            methods |= supported
    return [m for m in _HTTP_METHODS if m in methods]


def _route_path(request: Request) -> str:
    path, root = request.scope["path"], request.scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


def install_error_handlers(app: FastAPI, max_upload_files: int | None = None) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 400 and message.startswith(_PARSER_FILE_LIMIT) and max_upload_files is not None:
            return error_response(413, f"too many files (at most {max_upload_files} per request)")
        headers = getattr(exc, "headers", None)
        if exc.status_code == 405:
            methods = allowed_methods(request.app, _route_path(request))
            if methods:  # a path the document does not describe keeps the router's answer
                headers = {**(headers or {}), "Allow": ", ".join(methods)}
        return error_response(exc.status_code, message, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, _describe_validation(exc))

    @app.exception_handler(ProgressNotFound)
    async def _not_found(_: Request, exc: ProgressNotFound) -> JSONResponse:
        return error_response(404, str(exc))

    @app.exception_handler(InvalidProgressUpdate)
    async def _invalid(_: Request, exc: InvalidProgressUpdate) -> JSONResponse:
        return error_response(422, str(exc))

    @app.exception_handler(OperationalError)
    @app.exception_handler(PoolTimeoutError)
    @app.exception_handler(DBAPIError)
    async def _database(_: Request, exc: Exception) -> JSONResponse:
        log.warning("database unavailable: %s", exc.__class__.__name__, exc_info=exc)
        return error_response(503, "The progress database is unavailable; try again shortly.")

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error", exc_info=exc)
        return error_response(500, "Internal error; it has been logged.")
