"""The status service: progress endpoints for the dashboard and anyone else who asks."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

from fastapi import FastAPI
from sqlalchemy import Engine
from sqlalchemy.orm import Session
from starlette.types import ASGIApp, Receive, Scope, Send

from expert_pipeline.adapters.factory import build_chat_provider, check_parts
from expert_pipeline.adapters.parts_description import log_parts
from expert_pipeline.core.auth import any_tokens
from expert_pipeline.core.db import engine_for, migrate
from expert_pipeline.core.settings import Settings, get_settings
from status_api.api.admission import AdmissionLimit
from status_api.api.auth_gate import AuthGate
from status_api.api.errors import install_error_handlers
from status_api.api.hot_reads import HotReads
from status_api.api.log_redaction import install_log_redaction
from status_api.api.main import api_router
from status_api.api.security_headers import SecurityHeaders
from status_api.api.token_cache import TokenCache
from status_api.api.upload_limits import RequestSizeLimit
from status_api.dashboard import install_dashboard
from status_api.docs import install_docs
from status_api.live import ProgressBroadcaster
from status_api.run_trigger import RunTrigger

log = logging.getLogger("status_api")


LOCAL_MODE_MESSAGE = "no API tokens: local mode, open to this machine only"


def log_auth_mode(engine: Engine, logger: logging.Logger) -> bool:
    """Say whether the API needs tokens; True when it does."""
    with Session(engine) as session:
        tokens = any_tokens(session)
    if tokens:
        logger.info("API tokens exist: every /api/* request needs 'Authorization: Bearer <token>'")
    else:
        logger.warning(
            "%s (create one with `expert-pipeline tokens create --owner NAME`)", LOCAL_MODE_MESSAGE
        )
    return tokens


_frozen = False


def freeze_startup_objects() -> None:
    """Once per process, when the service has started: what exists then (modules, the app) lives
    as long as the process, so the cyclic GC stops walking it. A full collection then takes
    milliseconds, not the ~100 ms pause (every request waiting) it took over ~125k objects."""
    global _frozen
    if not _frozen:
        _frozen = True
        gc.collect()
        gc.freeze()


class StatusAPI(FastAPI):
    """FastAPI with a pure ASGI layer in front of all of it, its own layers included (the hot
    reads, built by `create_app`): what it answers costs no routing, validation or telemetry."""

    hot_reads: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.hot_reads is None or scope["type"] != "http":
            await super().__call__(scope, receive, send)
        else:
            await self.hot_reads(scope, receive, send)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    install_log_redaction()  # no token or stream ticket in a URL reaches the access log

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.ensure_dirs()
        check_parts(settings)
        log_parts(settings, log)
        migrate(settings.resolved_database_url)
        log_auth_mode(app.state.engine, log)
        freeze_startup_objects()
        yield
        hot = app.state.hot_reads.stats
        log.info(
            "polled GETs answered from memory: %d (404: %d; after waiting for a read: %d); by the routes: %d",
            hot.hits,
            hot.not_found,
            hot.waits,
            hot.misses,
        )
        await app.state.progress_broadcaster.aclose()
        if app.state.run_trigger is not None:
            app.state.run_trigger.close()

    app = StatusAPI(
        title="Expert Pipeline status API",
        description="Progress of expert ingestion: the documented progress endpoints.",
        version="0.1.0",
        lifespan=lifespan,
        docs_url=None,  # /docs is served from local files by install_docs, not a CDN
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.engine = engine_for(settings.resolved_database_url)
    install_error_handlers(app, max_upload_files=settings.max_upload_files)
    # Live progress (SSE) and the polled GETs' answers in memory, from one read per tick.
    app.state.progress_broadcaster = ProgressBroadcaster(app.state.engine, settings)
    app.state.token_cache = TokenCache(app.state.engine)
    # In front of everything, the polled GETs of a caller known from memory are answered from
    # memory. Then, inside out: the gate authenticates (from memory, or the database) before any
    # body is read; the size limit (outside it) refuses a declared oversized body at once;
    # admission counts the gate's lookup.
    app.hot_reads = app.state.hot_reads = HotReads(
        partial(FastAPI.__call__, app), app.state.progress_broadcaster, app.state.token_cache
    )
    app.add_middleware(AuthGate, engine=app.state.engine, tokens=app.state.token_cache)
    app.add_middleware(RequestSizeLimit, max_upload_bytes=settings.max_upload_total_bytes)
    app.add_middleware(AdmissionLimit)
    app.add_middleware(SecurityHeaders)  # outermost: early 413/503 answers get the headers too
    # Runs submitted the moment an upload commits (with `make up`); the sensor is the safety net.
    app.state.run_trigger = (
        RunTrigger(settings.dagster_graphql_url, app.state.engine) if settings.dagster_graphql_url else None
    )
    # Chat, for the API and the dashboard that uses it.
    app.state.chat_provider = build_chat_provider(settings)
    app.include_router(api_router)
    install_dashboard(app)
    install_docs(app)
    return app
