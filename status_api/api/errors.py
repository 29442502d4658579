"""Every error is JSON `{"success": false, "error": "..."}` with the right status code.

A database outage becomes 503 with a message; nothing leaks a stack trace or a bare 500.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, OperationalError, TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException

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


def install_error_handlers(app: FastAPI, max_upload_files: int | None = None) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 400 and message.startswith(_PARSER_FILE_LIMIT) and max_upload_files is not None:
            return error_response(413, f"too many files (at most {max_upload_files} per request)")
        return error_response(exc.status_code, message, headers=getattr(exc, "headers", None))

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
