"""The API's gate, over real HTTP: who is asking is decided before any body is read; bodies
outside uploads are capped at 64 KB; no secret from a URL reaches the log; local mode serves
this machine only, by its own name, and refuses writes from foreign pages."""

from __future__ import annotations

import ipaddress
import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from expert_pipeline.core import auth
from expert_pipeline.core.settings import Settings
from status_api.api.auth_gate import AuthGate
from tests.api_process import ApiProcess
from tests.conftest import LiveServer, free_port

MB = 1024 * 1024
CREATE_A_TOKEN = "expert-pipeline tokens create --owner NAME"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# --- refusing before reading ------------------------------------------------------------------


class Upload:
    """A raw HTTP request whose body a thread keeps sending (up to `total` bytes) while the
    caller reads the answer: what a client streaming a huge body sees."""

    def __init__(self, url: str, head: bytes, total: int, chunked: bool) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.conn = socket.create_connection((host, int(port)), timeout=10)
        self.head, self.total, self.chunked = head, total, chunked
        self.sent = 0
        self.send_error: BaseException | None = None
        self.thread = threading.Thread(target=self._send, daemon=True)

    def _send(self) -> None:
        piece = b"x" * MB
        frame = b"%x\r\n%s\r\n" % (len(piece), piece) if self.chunked else piece
        try:
            self.conn.sendall(self.head)
            while self.sent < self.total:
                self.conn.sendall(frame)
                self.sent += len(piece)
            if self.chunked:
                self.conn.sendall(b"0\r\n\r\n")
        except OSError as error:  # the server answered and closed: the rest was never read
            self.send_error = error

    def answer(self, timeout: float) -> tuple[str, float]:
        """The response head and body as text, and the seconds it took from the first byte sent."""
        started = time.monotonic()
        self.thread.start()
        self.conn.settimeout(timeout)
        data = b""
        try:
            while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
                chunk = self.conn.recv(65536)
                if not chunk:
                    break
                data += chunk
        except ConnectionResetError:
            pass
        return data.decode(errors="replace"), time.monotonic() - started

    def finish(self, timeout: float) -> None:
        """Wait for the sender to stop on its own (the server hung up), then close."""
        self.thread.join(timeout=timeout)
        stopped = not self.thread.is_alive()
        self.conn.close()
        self.thread.join(timeout=10)
        assert stopped, f"the server kept reading: {self.sent // MB} MB sent"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_unauthenticated_200_mb_is_refused_at_once_without_reading_it(
    settings: Settings, db: Session, tmp_path: Path
) -> None:
    auth.create_token(db, "alice")
    with ApiProcess(settings, tmp_path / "api.log") as api:
        # Warm up the paths under test, so what is measured next is the huge body alone.
        with httpx.Client(base_url=api.url(), timeout=10) as http:
            for _ in range(3):
                assert http.post("/api/experts/x/chat", json={"message": "hi"}).status_code == 401
                assert http.post("/api/experts", files={"files": ("a.txt", b"a")}).status_code == 401
        before = api.rss()
        cases = [
            # (what, request head, chunked?, expected status)
            ("chat, chunked", b"POST /api/experts/x/chat HTTP/1.1\r\nHost: 127.0.0.1\r\n"
             b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n", True, 401),
            ("upload, chunked", b"POST /api/experts HTTP/1.1\r\nHost: 127.0.0.1\r\n"
             b"Content-Type: multipart/form-data; boundary=b\r\nTransfer-Encoding: chunked\r\n\r\n", True, 401),
            # Under the upload limit: only authentication can refuse it.
            ("upload, 200 MB declared", b"POST /api/experts HTTP/1.1\r\nHost: 127.0.0.1\r\n"
             b"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: %d\r\n\r\n" % (200 * MB), False, 401),
            # Over the 64 KB cap of every other route: refused for its size before anything else.
            ("chat, 200 MB declared", b"POST /api/experts/x/chat HTTP/1.1\r\nHost: 127.0.0.1\r\n"
             b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % (200 * MB), False, 413),
        ]
        for what, head, chunked, status in cases:
            upload = Upload(api.url(), head, 200 * MB, chunked)
            try:
                answer, seconds = upload.answer(timeout=10)
            finally:
                upload.finish(timeout=10)
            assert answer.startswith(f"HTTP/1.1 {status} "), (what, answer)
            assert seconds < 1.0, (what, seconds)
            body = json.loads(answer.split("\r\n\r\n", 1)[1])
            assert body["success"] is False and body["error"], (what, body)
            if status == 401:
                assert "www-authenticate: bearer" in answer.lower(), what
            # The server hung up on the rest: far less than 200 MB was ever accepted.
            assert isinstance(upload.send_error, (BrokenPipeError, ConnectionResetError)), (what, upload.send_error)
            assert upload.sent < 100 * MB, (what, upload.sent)
        grown = api.rss() - before
        assert grown < 20 * MB, f"the API's memory grew by {grown / MB:.1f} MB"
        # And it still serves.
        with httpx.Client(base_url=api.url(), timeout=10) as http:
            assert http.get("/api/experts", headers=bearer(auth.create_token(db, "bob"))).status_code == 200


def test_bodies_outside_uploads_are_capped_at_64_kb(http: httpx.Client, db: Session) -> None:
    token = auth.create_token(db, "alice")
    expert = http.post("/api/experts", data={"name": "Big"}, files={"files": ("a.txt", b"x" * 200_000)},
                       headers=bearer(token))
    assert expert.status_code == 201, expert.text  # uploads keep their own (large) limit
    expert_id = expert.json()["expert"]["id"]
    big = {"message": "hello", "padding": "x" * 100_000}  # 100 KB of JSON
    declared = http.post(f"/api/experts/{expert_id}/chat", json=big, headers=bearer(token))
    assert declared.status_code == 413, declared.text
    assert "64 KB" in declared.json()["error"] and declared.json()["success"] is False

    def pieces() -> Iterator[bytes]:  # no Content-Length: cut off as the bytes pass the cap
        data = json.dumps(big).encode()
        for start in range(0, len(data), 8192):
            yield data[start:start + 8192]

    try:
        chunked = http.post(f"/api/experts/{expert_id}/chat", content=pieces(),
                            headers={**bearer(token), "Content-Type": "application/json"})
        assert chunked.status_code == 413 and "64 KB" in chunked.json()["error"], chunked.text
    except httpx.HTTPError:
        pass  # the server may hang up while the client is still sending
    # Within the cap the route answers as usual (not ready yet), and so do bodiless requests.
    assert http.post(f"/api/experts/{expert_id}/chat", json={"message": "hi"}, headers=bearer(token)).status_code == 409
    assert http.post(f"/api/experts/{expert_id}/cancel", headers=bearer(token)).status_code == 200
    # A 100 KB body sent to a route that takes none is refused the same way.
    assert http.post(f"/api/experts/{expert_id}/retry", content=b"x" * 100_000,
                     headers=bearer(token)).status_code == 413


# --- secrets never in the log -----------------------------------------------------------------


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_no_token_or_ticket_in_a_url_reaches_the_log(settings: Settings, db: Session, tmp_path: Path) -> None:
    token = auth.create_token(db, "alice")
    revoked = auth.create_token(db, "mallory")
    auth.revoke_token(db, revoked)
    with ApiProcess(settings, tmp_path / "api.log") as api, httpx.Client(base_url=api.url(), timeout=10) as http:
        ticket = http.post("/api/stream-tickets", headers=bearer(token)).json()["ticket"]
        with http.stream("GET", "/api/experts/progress/stream", params={"ticket": ticket}) as stream:
            assert stream.status_code == 200
        secrets = {"token": token, "ticket": ticket, "revoked": revoked}
        answers = [
            http.get("/api/experts/progress/stream", params={"ticket": ticket}).status_code,  # used up: 401
            http.get("/api/experts", params={"access_token": token}).status_code,  # 401: tokens are headers
            http.get("/api/experts/progress/stream", params={"access_token": revoked}).status_code,
        ]
        for name in ("token", "api_key", "key", "apikey", "secret", "password", "X-Amz-Signature", "refresh_token"):
            value = f"s3cr3t-{name}-{uuid.uuid4().hex}"
            secrets[name] = value
            answers.append(http.get("/api/experts", params={name: value, "page": "2"}, headers=bearer(token)).status_code)
            answers.append(http.get(f"/dashboard/?{name}={value}").status_code)
        assert answers[:3] == [401, 401, 401] and set(answers[3:]) == {200}, answers

        def all_logged() -> bool:
            return api.log().count('" 200') >= 2 * 8 + 1 and api.log().count('" 401') >= 3

        from tests.waiting import wait_for

        wait_for("the access log lines", all_logged, timeout=10)
        log = api.log()
    for name, value in secrets.items():
        assert value not in log, f"the {name} reached the log"
    # The lines are there, with the values replaced (and harmless parameters kept).
    assert log.count("[redacted]") >= 2 * 8 + 4
    assert "GET /api/experts?access_token=[redacted] HTTP/1.1" in log
    assert "page=2" in log


# --- local mode: this machine only --------------------------------------------------------------


def _non_loopback_ipv4() -> str | None:
    for addresses in psutil.net_if_addrs().values():
        for address in addresses:
            if address.family == socket.AF_INET and not ipaddress.ip_address(address.address).is_loopback:
                return str(address.address)
    return None


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_local_mode_refuses_other_machines_even_bound_to_every_address(
    settings: Settings, db: Session, tmp_path: Path
) -> None:
    """Started as the README's uvicorn line does (--host 0.0.0.0), not by the launcher."""
    address = _non_loopback_ipv4()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address to connect from")
    with ApiProcess(settings, tmp_path / "api.log", host="0.0.0.0") as api:
        with httpx.Client(base_url=api.url(address), timeout=10) as remote:
            # A connection to this machine's network address comes from that address: not loopback.
            refused = remote.get("/api/experts")
            assert refused.status_code == 403, refused.text
            assert CREATE_A_TOKEN in refused.json()["error"]
            created = remote.post("/api/experts", data={"name": "x"}, files={"files": ("a.txt", b"a")})
            assert created.status_code == 403
            assert remote.post("/api/stream-tickets").status_code == 403
            assert remote.get("/api/experts/progress/stream").status_code == 403
            assert remote.get("/dashboard/").status_code == 200  # the page's files are public in every mode
            with httpx.Client(base_url=api.url(), timeout=10) as local:
                assert local.get("/api/experts").json()["count"] == 0  # nothing was created
            # With a token the API serves the network, to token holders only.
            token = auth.create_token(db, "alice")
            assert remote.get("/api/experts").status_code == 401
            assert remote.get("/api/experts", headers=bearer(token)).status_code == 200


def test_local_mode_answers_only_to_loopback_names_and_origins(live_api: LiveServer, db: Session) -> None:
    with httpx.Client(base_url=live_api.url, timeout=10) as http:
        for host in ("localhost", f"localhost:{live_api.port}", "127.0.0.1:1", "[::1]", "[::1]:8000", "LOCALHOST"):
            assert http.get("/api/experts", headers={"Host": host}).status_code == 200, host
        # DNS rebinding: a page on evil.example whose name now resolves to 127.0.0.1.
        for host in ("evil.example", f"evil.example:{live_api.port}", "127.0.0.1.nip.io", "localhost.evil.example",
                     "[::2]"):
            r = http.get("/api/experts", headers={"Host": host})
            assert r.status_code == 403, (host, r.text)
            assert "localhost" in r.json()["error"] and CREATE_A_TOKEN in r.json()["error"]

        def create(origin: str | None) -> httpx.Response:
            headers = {"Origin": origin} if origin is not None else {}
            return http.post("/api/experts", data={"name": "x"}, files={"files": ("a.txt", b"a")}, headers=headers)

        for origin in ("http://evil.example", "https://localhost.evil.example", "null", "file://"):
            r = create(origin)
            assert r.status_code == 403 and "origin" in r.json()["error"].lower(), (origin, r.text)
        assert http.get("/api/experts").json()["count"] == 0
        for origin in (None, live_api.url, "http://localhost:5173", "http://[::1]:3000"):
            assert create(origin).status_code == 201, origin
        expert_id = http.get("/api/experts").json()["experts"][0]["id"]
        # Reads are not changes (and a rebinding page cannot name this host, see above).
        assert http.get("/api/experts", headers={"Origin": "http://evil.example"}).status_code == 200
        for method in ("DELETE", "POST"):
            path = f"/api/experts/{expert_id}" if method == "DELETE" else f"/api/experts/{expert_id}/cancel"
            assert http.request(method, path, headers={"Origin": "http://evil.example"}).status_code == 403
        assert http.get("/api/experts").json()["count"] == 4

        # With tokens, the token is what counts: any name, any origin.
        token = auth.create_token(db, "alice")
        assert http.get("/api/experts", headers={"Host": "api.example.com", **bearer(token)}).status_code == 200
        assert http.post("/api/experts", data={"name": "y"}, files={"files": ("a.txt", b"a")},
                         headers={"Origin": "https://app.example.com", **bearer(token)}).status_code == 201


def _call_gate(engine: Engine, client: tuple[str, int] | None) -> tuple[int, dict[str, Any] | None]:
    """The gate alone, on a crafted scope: its status, and what the app behind it saw."""
    import asyncio

    seen: dict[str, Any] = {}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.update(scope["state"])
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        raise AssertionError("the gate must not read the body")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "/api/experts", "query_string": b"", "client": client,
             "headers": [(b"host", b"127.0.0.1:8000")]}
    asyncio.run(AuthGate(app, engine)(scope, receive, send))  # type: ignore[arg-type]
    return sent[0]["status"], seen or None


def test_the_gate_tells_loopback_peers_from_others(engine: Engine) -> None:
    for client in (("127.0.0.1", 5000), ("127.3.4.5", 1), ("::1", 1), ("::ffff:127.0.0.1", 1), None):
        status, state = _call_gate(engine, client)
        assert status == 204 and state is not None and state["principal"] == auth.LOCAL_PRINCIPAL, client
    for client in (("192.0.2.7", 5000), ("10.0.0.1", 1), ("::ffff:192.0.2.7", 1), ("fd00::2", 1), ("testclient", 1)):
        assert _call_gate(engine, client) == (403, None), client


def test_the_gate_answers_503_when_the_database_is_down() -> None:
    from sqlalchemy import create_engine

    closed_port = free_port()  # nothing listens there
    down = create_engine(f"postgresql+psycopg2://postgres@127.0.0.1:{closed_port}/none",
                         connect_args={"connect_timeout": 2})
    assert _call_gate(down, ("127.0.0.1", 1)) == (503, None)
