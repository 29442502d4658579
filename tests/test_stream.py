"""Live progress over Server-Sent Events, over real HTTP, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, event, text
from sqlalchemy.orm import Session

from expert_pipeline.core.db import engine_for, migrate
from expert_pipeline.core.progress_service import ExpertProcessingProgressService
from expert_pipeline.core.settings import Settings
from status_api.live import ProgressBroadcaster
from tests.conftest import LiveServer, _clean
from tests.waiting import wait_for_async

Event = tuple[str, Any]


@contextmanager
def progress_service(settings: Settings) -> Iterator[ExpertProcessingProgressService]:
    with Session(engine_for(settings.resolved_database_url), expire_on_commit=False) as session:
        yield ExpertProcessingProgressService(session)


def write(settings: Settings, method: str, *args: Any, **kwargs: Any) -> None:
    with progress_service(settings) as service:
        getattr(service, method)(*args, **kwargs)


async def awrite(settings: Settings, method: str, *args: Any, **kwargs: Any) -> None:
    await asyncio.to_thread(write, settings, method, *args, **kwargs)


class SSEClient:
    """One open event stream; frames are parsed into (event, data) as they arrive."""

    def __init__(self) -> None:
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self.status_code = 0
        self.content_type = ""
        self.body = b""

    async def _read(self, response: httpx.Response) -> None:
        name, data = "message", []
        async for line in response.aiter_lines():
            if line == "":
                if data:
                    await self.events.put((name, json.loads("\n".join(data))))
                name, data = "message", []
            elif line.startswith(":"):
                await self.events.put(("comment", line[1:].strip()))
            elif line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].lstrip())
        await self.events.put(("end", None))

    async def next(self, timeout: float = 10.0, *, skip_comments: bool = True) -> Event:
        async with asyncio.timeout(timeout):
            while True:
                item = await self.events.get()
                if not (skip_comments and item[0] == "comment"):
                    return item

    async def progress(self, timeout: float = 10.0) -> dict[str, Any]:
        name, data = await self.next(timeout)
        assert name == "progress", (name, data)
        return data


@asynccontextmanager
async def sse(client: httpx.AsyncClient, path: str) -> AsyncIterator[SSEClient]:
    reader = SSEClient()
    async with client.stream("GET", path) as response:
        reader.status_code = response.status_code
        reader.content_type = response.headers.get("content-type", "")
        if response.status_code != 200:
            reader.body = await response.aread()
            yield reader
            return
        task = asyncio.create_task(reader._read(response))
        try:
            yield reader
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def client_for(server: LiveServer) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    return httpx.AsyncClient(base_url=server.url, timeout=httpx.Timeout(20.0), limits=limits)


def broadcaster_of(server: LiveServer) -> ProgressBroadcaster:
    return server.app.state.progress_broadcaster  # type: ignore[attr-defined]


async def wait_until(predicate: Any, timeout: float = 5.0) -> None:
    await wait_for_async("the stream's condition", predicate, timeout)


def test_expert_stream_sends_current_state_then_changes_and_ends_on_completion(
    live_api: LiveServer, settings: Settings
) -> None:
    write(settings, "create_progress_record", expert_id="expert-stream", agent_id="agent-1", total_files=2)

    async def scenario() -> None:
        async with client_for(live_api) as client, sse(client, "/api/experts/expert-stream/progress/stream") as stream:
            assert stream.status_code == 200 and stream.content_type.startswith("text/event-stream")
            first = await stream.progress()
            # The very same JSON object as the specification's `progress`.
            rest = (await client.get("/api/experts/expert-stream/progress")).json()["progress"]
            assert first == rest
            assert (first["status"], first["stage"], first["total_files"]) == ("pending", "file_processing", 2)

            await awrite(
                settings, "update_progress", expert_id="expert-stream", stage="embedding", current_file="a.pdf",
                current_batch=3, total_batches=10, current_chunk=30, total_chunks=100, progress_percentage=45.0,
                details={"batch": "3/10"},
            )
            update = await stream.progress(timeout=5)
            assert (update["status"], update["stage"], update["progress_percentage"]) == ("in_progress", "embedding", 45.0)
            assert (update["current_batch"], update["total_chunks"], update["current_file"]) == (3, 100, "a.pdf")
            assert update["details"] == {"batch": "3/10"}
            assert update["updated_at"] > first["updated_at"]

            await awrite(settings, "mark_completed", expert_id="expert-stream", metadata={"total_time": 1.5})
            done = await stream.progress(timeout=5)
            assert (done["status"], done["stage"], done["progress_percentage"]) == ("completed", "complete", 100.0)
            assert done == (await client.get("/api/experts/expert-stream/progress")).json()["progress"]
            # After the terminal state the server ends the stream by itself.
            assert await stream.next(timeout=5) == ("end", None)

            # A finished expert's stream is one frame and the end.
            async with sse(client, "/api/experts/expert-stream/progress/stream") as again:
                assert (await again.progress())["status"] == "completed"
                assert await again.next(timeout=5) == ("end", None)
        await wait_until(lambda: broadcaster_of(live_api).subscriber_count == 0)

    asyncio.run(scenario())


def test_all_active_stream_delivers_changes_for_several_experts(live_api: LiveServer, settings: Settings) -> None:
    for name in ("expert-a", "expert-b", "expert-c"):
        write(settings, "create_progress_record", expert_id=name, total_files=1)
    write(settings, "create_progress_record", expert_id="expert-old", total_files=1)
    write(settings, "mark_completed", expert_id="expert-old")
    broadcaster_of(live_api).keepalive_seconds = 0.5

    async def scenario() -> None:
        async with client_for(live_api) as client, sse(client, "/api/experts/progress/stream") as stream:
            assert stream.status_code == 200
            snapshot = {}
            for _ in range(3):
                record = await stream.progress()
                snapshot[record["expert_id"]] = record
            # The active experts at once; a finished one is not "active".
            assert set(snapshot) == {"expert-a", "expert-b", "expert-c"}
            assert {r["status"] for r in snapshot.values()} == {"pending"}

            await awrite(settings, "update_progress", expert_id="expert-a", stage="embedding", progress_percentage=30)
            await awrite(settings, "update_progress", expert_id="expert-b", stage="text_extraction", progress_percentage=12)
            await awrite(settings, "mark_failed", expert_id="expert-c", error_message="OpenAI API error")
            await awrite(settings, "create_progress_record", expert_id="expert-d", total_files=4)
            latest: dict[str, dict[str, Any]] = {}
            wanted = {
                "expert-a": ("in_progress", "embedding"), "expert-b": ("in_progress", "text_extraction"),
                "expert-c": ("failed", "failed"), "expert-d": ("pending", "file_processing"),
            }
            while any((latest.get(k, {}).get("status"), latest.get(k, {}).get("stage")) != v for k, v in wanted.items()):
                record = await stream.progress(timeout=5)
                latest[record["expert_id"]] = record
            assert "expert-old" not in latest
            assert latest["expert-c"]["error_message"] == "OpenAI API error"
            assert latest["expert-a"]["progress_percentage"] == 30.0

            # Quiet periods carry keepalive comments (FastAPI's `: ping`).
            assert await stream.next(timeout=3, skip_comments=False) == ("comment", "ping")

            # A new subscriber's snapshot shows the current active set (c failed, d arrived).
            async with sse(client, "/api/experts/progress/stream") as second:
                ids = {(await second.progress())["expert_id"] for _ in range(3)}
                assert ids == {"expert-a", "expert-b", "expert-d"}

    asyncio.run(scenario())


def test_one_database_read_per_tick_for_fifty_subscribers(live_api: LiveServer, settings: Settings) -> None:
    experts = [f"expert-{i}" for i in range(5)]
    for expert_id in experts:
        write(settings, "create_progress_record", expert_id=expert_id, total_files=1)
    broadcaster = broadcaster_of(live_api)
    engine: Engine = live_api.app.state.engine  # type: ignore[attr-defined]
    statements: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "expert_processing_progress" in statement:
            statements.append(statement)

    async def scenario() -> None:
        async with client_for(live_api) as client, asyncio.TaskGroup() as group:
            streams: list[tuple[str | None, SSEClient]] = []
            ready = asyncio.Event()
            release = asyncio.Event()

            async def subscribe(expert_id: str | None) -> None:
                path = "/api/experts/progress/stream" if expert_id is None else f"/api/experts/{expert_id}/progress/stream"
                async with sse(client, path) as stream:
                    for _ in range(len(experts) if expert_id is None else 1):
                        assert (await stream.progress())["status"] == "pending"
                    streams.append((expert_id, stream))
                    if len(streams) == 50:
                        ready.set()
                    await release.wait()

            for index in range(50):
                group.create_task(subscribe(None if index % 2 else experts[index % 5]))
            async with asyncio.timeout(20):
                await ready.wait()
            assert broadcaster.subscriber_count == 50
            assert broadcaster.stats.pollers_started == 1  # one poller shared by everyone

            # Idle: every read of the progress table is the broadcaster's tick read.
            event.listen(engine, "before_cursor_execute", count)
            try:
                ticks_before, reads_before = broadcaster.stats.ticks, len(statements)
                await wait_until(lambda: broadcaster.stats.ticks - ticks_before >= 5, timeout=20)
                ticks, reads = broadcaster.stats.ticks - ticks_before, len(statements) - reads_before
                assert ticks - 1 <= reads <= ticks + 1, (reads, ticks)
                assert all("updated_at >" in s for s in statements)

                # Busy: writes fan out to all 50, still one broadcaster read per tick.
                ticks_before, mark = broadcaster.stats.ticks, len(statements)
                for number, expert_id in enumerate(experts):
                    await awrite(settings, "update_progress", expert_id=expert_id, stage="embedding",
                                 progress_percentage=10 + number)
                for expert_id, stream in streams:
                    mine = [expert_id] if expert_id else experts
                    seen = {}
                    while len(seen) < len(mine):
                        record = await stream.progress(timeout=5)
                        seen[record["expert_id"]] = record["progress_percentage"]
                    assert seen == {e: 10.0 + experts.index(e) for e in mine}
                ticks = broadcaster.stats.ticks - ticks_before
                tick_reads = [s for s in statements[mark:] if "updated_at >" in s]
                assert ticks - 1 <= len(tick_reads) <= ticks + 1, (len(tick_reads), ticks)
            finally:
                event.remove(engine, "before_cursor_execute", count)
                release.set()
        # Everyone disconnected: subscriptions released, the poller stops.
        await wait_until(lambda: broadcaster.subscriber_count == 0 and not broadcaster.running)

    asyncio.run(scenario())


def test_unknown_expert_is_404_json(http: httpx.Client, live_api: LiveServer) -> None:
    response = http.get("/api/experts/no-such-expert/progress/stream")
    assert response.status_code == 404
    assert response.json() == {"success": False, "error": "No progress record for expert 'no-such-expert'"}
    assert http.get("/api/experts/bad id!/progress/stream").status_code == 422
    assert broadcaster_of(live_api).subscriber_count == 0
    # Documented: the streams are text/event-stream, the 404 is JSON.
    paths = http.get("/openapi.json").json()["paths"]
    one = paths["/api/experts/{expert_id}/progress/stream"]["get"]["responses"]
    assert list(one["200"]["content"]) == ["text/event-stream"] and list(one["404"]["content"]) == ["application/json"]
    assert "/api/experts/progress/stream" in paths


@pytest.fixture
def pg_api(tmp_path: Path, postgres_database: str) -> Iterator[tuple[LiveServer, Settings]]:
    migrate(postgres_database)
    _clean(engine_for(postgres_database))
    settings = Settings(expert_pipeline_home=tmp_path / "home", database_url=postgres_database)
    from status_api.main import create_app

    app = create_app(settings)
    with LiveServer(app) as server:
        server.app = app  # type: ignore[attr-defined]
        yield server, settings


@pytest.mark.postgres
def test_postgres_notify_wakes_the_stream_for_writes_from_any_connection(pg_api: tuple[LiveServer, Settings]) -> None:
    server, settings = pg_api
    engine = engine_for(settings.resolved_database_url)
    with engine.connect() as conn:
        triggers = conn.execute(
            text("SELECT tgname FROM pg_trigger WHERE tgrelid = 'expert_processing_progress'::regclass")
        ).scalars().all()
    assert "expert_progress_notify" in triggers
    write(settings, "create_progress_record", expert_id="expert-pg", total_files=1)
    broadcaster = broadcaster_of(server)
    broadcaster.tick_seconds = 30.0  # polling alone would take 30 s: only a notification is this fast

    async def scenario() -> None:
        async with client_for(server) as client, sse(client, "/api/experts/expert-pg/progress/stream") as stream:
            assert (await stream.progress())["status"] == "pending"
            await wait_until(lambda: broadcaster.stats.listening)

            # A plain SQL write on another connection (as a pipeline process or psql would do).
            def raw_update() -> None:
                with engine.begin() as conn:
                    conn.execute(text(
                        "UPDATE expert_processing_progress SET status = 'in_progress', stage = 'embedding', "
                        "progress_percentage = 55, updated_at = now() WHERE expert_id = 'expert-pg'"
                    ))

            notified = broadcaster.stats.notifications
            await asyncio.to_thread(raw_update)
            # Polling is 30 s away: a change within the 5 s wait came through the notification.
            record = await stream.progress(timeout=5)
            assert (record["stage"], record["progress_percentage"]) == ("embedding", 55.0)
            assert broadcaster.stats.notifications > notified

            # The LISTEN connection dies (a restart, a proxy, an operator): it comes back by itself.
            def kill_listener() -> int:
                with engine.begin() as conn:
                    return len(conn.execute(text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND query = 'LISTEN expert_progress'"
                    )).all())

            assert await asyncio.to_thread(kill_listener) == 1
            await wait_until(lambda: not broadcaster.stats.listening)
            await wait_until(lambda: broadcaster.stats.listening)

            notified = broadcaster.stats.notifications
            await awrite(settings, "mark_completed", expert_id="expert-pg")
            assert (await stream.progress(timeout=5))["status"] == "completed"
            assert broadcaster.stats.notifications > notified
            assert await stream.next(timeout=5) == ("end", None)

    asyncio.run(scenario())


def test_a_run_that_goes_quiet_is_pushed_as_stalled_and_back(settings: Settings) -> None:
    # A heartbeat does not change `updated_at`, so nothing new is read when a run goes quiet;
    # the broadcaster still pushes the flag as it flips, and back once the run beats again.
    from status_api.main import create_app

    quick = settings.model_copy(update={"stall_after_seconds": 2.0})
    write(quick, "create_progress_record", expert_id="expert-quiet", total_files=1)
    write(quick, "start_run", "expert-quiet", run_id="run-1")
    app = create_app(quick)
    with LiveServer(app) as server:
        server.app = app  # type: ignore[attr-defined]

        async def scenario() -> None:
            broadcaster_of(server).reseed_seconds = 0.2  # re-read active rows (and heartbeats) often
            # A beat just before subscribing: the server's start-up (seconds on a loaded machine)
            # must not count as the run's silence.
            await awrite(quick, "heartbeat", "expert-quiet")
            async with client_for(server) as client, sse(client, "/api/experts/expert-quiet/progress/stream") as stream:
                first = await stream.progress()
                assert (first["status"], first["stalled"]) == ("in_progress", False)
                quiet = await stream.progress(timeout=5)
                assert quiet["stalled"] is True
                assert quiet["updated_at"] == first["updated_at"]  # the row itself never changed
                assert (await client.get("/api/experts/expert-quiet/progress")).json()["progress"]["stalled"] is True

                await awrite(quick, "heartbeat", "expert-quiet")
                alive = await stream.progress(timeout=5)
                assert alive["stalled"] is False and alive["updated_at"] == first["updated_at"]

        asyncio.run(scenario())


def test_a_client_that_disconnects_mid_stream_leaves_no_subscriber_behind(
    live_api: LiveServer, settings: Settings
) -> None:
    write(settings, "create_progress_record", expert_id="expert-gone", total_files=1)
    broadcaster = broadcaster_of(live_api)
    host, port = live_api.url.removeprefix("http://").split(":")

    async def raw_stream(path: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A bare socket client: the request, the head and the first event, then nothing."""
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: text/event-stream\r\n\r\n".encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 200 "), head
        assert b"event: progress" in await asyncio.wait_for(reader.readuntil(b"event: progress"), 10)
        return reader, writer

    async def scenario() -> None:
        async with client_for(live_api) as client:
            async with sse(client, "/api/experts/progress/stream") as staying:
                assert (await staying.progress())["expert_id"] == "expert-gone"
                assert broadcaster.subscriber_count == 1

                # Clients that go away while the stream is idle (nothing to send): one expert's
                # stream and the all-experts stream, over httpx and over a bare socket.
                for path in ("/api/experts/expert-gone/progress/stream", "/api/experts/progress/stream"):
                    async with sse(client, path) as leaving:
                        assert (await leaving.progress())["expert_id"] == "expert-gone"
                        assert broadcaster.subscriber_count == 2
                    await wait_until(lambda: broadcaster.subscriber_count == 1)

                    _reader, writer = await raw_stream(path)
                    assert broadcaster.subscriber_count == 2
                    writer.close()  # the socket closes without a word
                    await wait_until(lambda: broadcaster.subscriber_count == 1)
                    assert broadcaster.stats.subscribers == 1

                # A client that goes away while changes are flowing to it.
                _reader, writer = await raw_stream("/api/experts/expert-gone/progress/stream")
                for percentage in (10, 20):
                    await awrite(settings, "update_progress", expert_id="expert-gone", stage="embedding",
                                 progress_percentage=percentage)
                    assert (await staying.progress(timeout=5))["progress_percentage"] == percentage
                writer.close()
                await wait_until(lambda: broadcaster.subscriber_count == 1)

                # The one who stayed still hears every change.
                await awrite(settings, "update_progress", expert_id="expert-gone", stage="embedding",
                             progress_percentage=30)
                assert (await staying.progress(timeout=5))["progress_percentage"] == 30
            # The last one gone: nothing left, and the database reader stops.
            await wait_until(lambda: broadcaster.subscriber_count == 0 and not broadcaster.running)
            assert broadcaster.stats.subscribers == 0

    asyncio.run(scenario())
