"""S3 over real HTTP for tests: moto's standalone server, and a proxy that can inject 5xx errors.

* `moto_endpoint` (session): moto's server (`ThreadedMotoServer`) on 127.0.0.1 and a port the
  kernel picks; its URL. Requests reach it over HTTP; nothing in botocore is patched.
* `aws_credentials`: dummy credentials and region in the environment, and every other source of
  credentials/config (shared files, profile, instance metadata) switched off.
* `s3_client` (session): a plain boto3 client for the moto server, with its own dummy
  credentials, for setting up and inspecting buckets.
* `s3_bucket`: a fresh, uniquely named bucket (and `aws_credentials`); emptied and deleted
  afterwards.
* `s3_storage`: an `S3FileStorage` for that bucket on the moto server.
* `s3_proxy`: a `FaultProxy` in front of the moto server. Point a storage at `s3_proxy.url`;
  `s3_proxy.fail_next(2, status=503)` answers the next 2 requests with S3's SlowDown error (500:
  InternalError) instead of forwarding them (`method="GET"`: the next 2 GETs);
  `fail_reads_of(fragment)` fails every GET/HEAD of matching paths until `heal()`.
  `s3_proxy.log` records every request's method, path, status and body size.
"""

from __future__ import annotations

import http.client
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
import pytest
from moto.server import ThreadedMotoServer

from expert_pipeline.adapters.s3_file_storage import S3FileStorage

REGION = "us-east-1"

# Headers that belong to one connection, not to the request/response being forwarded.
_HOP_BY_HOP = {
    "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
    "upgrade", "expect",
}
_ERRORS = {
    500: ("InternalError", "We encountered an internal error. Please try again."),
    502: ("BadGateway", "Bad gateway."),
    503: ("SlowDown", "Please reduce your request rate."),
    504: ("GatewayTimeout", "Gateway timeout."),
}


@dataclass(frozen=True)
class ProxiedRequest:
    method: str
    path: str
    status: int
    injected: bool
    body_bytes: int


class FaultProxy:
    """A small HTTP reverse proxy in a thread: forwards to `upstream`, or fails on demand."""

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self._upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self._lock = threading.Lock()
        self._pending_failures: list[tuple[int, str | None]] = []  # (status, only this method)
        self._failing_reads: dict[str, int] = {}
        self.log: list[ProxiedRequest] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def fail_next(self, count: int, status: int = 503, method: str | None = None) -> None:
        """Answer the next `count` requests (of `method`, if given) with `status` and S3's error
        body for it."""
        with self._lock:
            self._pending_failures.extend([(status, method)] * count)

    def fail_reads_of(self, fragment: str, status: int = 503) -> None:
        """Answer every GET/HEAD whose path contains `fragment` with `status`, until `heal()`."""
        with self._lock:
            self._failing_reads[fragment] = status

    def heal(self) -> None:
        with self._lock:
            self._pending_failures.clear()
            self._failing_reads.clear()

    @property
    def injected(self) -> list[ProxiedRequest]:
        return [r for r in self.log if r.injected]

    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    # Called by the handler threads.
    def _take_failure(self, method: str, path: str) -> int | None:
        with self._lock:
            if method in ("GET", "HEAD"):
                for fragment, status in self._failing_reads.items():
                    if fragment in path:
                        return status
            for i, (status, only) in enumerate(self._pending_failures):
                if only is None or only == method:
                    del self._pending_failures[i]
                    return status
            return None

    def _record(self, request: ProxiedRequest) -> None:
        with self._lock:
            self.log.append(request)


def _handler_for(proxy: FaultProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        # HTTP/1.1 so that "Expect: 100-continue" (botocore sends it with upload bodies) is
        # answered at once instead of the client waiting a second for it.
        protocol_version = "HTTP/1.1"
        timeout = 10  # idle keep-alive connections end instead of holding a thread forever

        def _read_body(self) -> bytes:
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                body = bytearray()
                while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                    body += self.rfile.read(size)
                    self.rfile.readline()
                while self.rfile.readline().strip():  # trailers, then the blank line
                    pass
                return bytes(body)
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _send(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
            self.send_response(status)
            for name, value in headers:
                self.send_header(name, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _forward(self, body: bytes) -> int:
            headers = {
                k: v for k, v in self.headers.items()
                if k.lower() not in _HOP_BY_HOP and k.lower() != "content-length"
            }
            if body or self.command in ("PUT", "POST"):
                headers["Content-Length"] = str(len(body))
            upstream = http.client.HTTPConnection(*proxy._upstream, timeout=30)
            try:
                upstream.request(self.command, self.path, body=body, headers=headers)
                response = upstream.getresponse()
                data = response.read()
                out = [(k, v) for k, v in response.getheaders() if k.lower() not in _HOP_BY_HOP]
                if self.command != "HEAD":  # HEAD keeps the object's Content-Length
                    out = [(k, v) for k, v in out if k.lower() != "content-length"]
                    out.append(("Content-Length", str(len(data))))
                self._send(response.status, out, data)
                return response.status
            finally:
                upstream.close()

        def _handle(self) -> None:
            body = self._read_body()
            status = proxy._take_failure(self.command, self.path)
            if status is None:
                status = self._forward(body)
                proxy._record(ProxiedRequest(self.command, self.path, status, False, len(body)))
                return
            code, message = _ERRORS.get(status, ("InternalError", "Injected error."))
            error = (
                '<?xml version="1.0" encoding="UTF-8"?>\n'
                f"<Error><Code>{code}</Code><Message>{message}</Message>"
                f"<RequestId>injected-{uuid.uuid4().hex[:8]}</RequestId></Error>"
            ).encode()
            proxy._record(ProxiedRequest(self.command, self.path, status, True, len(body)))
            self._send(
                status,
                [("Content-Type", "application/xml"), ("Content-Length", str(len(error)))],
                error,
            )

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib's name
            pass

    return Handler


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()
        # stop() ends serve_forever() but leaves the listening socket open.
        wsgi_server = getattr(server, "_server", None)
        if wsgi_server is not None:
            wsgi_server.server_close()


@pytest.fixture
def aws_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Dummy credentials; nothing from the developer's machine or an instance role leaks in."""
    for name in (
        "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
        "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_CREDENTIAL_FILE",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("BOTO_CONFIG", str(tmp_path / "no-boto-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture(scope="session")
def s3_client(moto_endpoint: str) -> Any:
    session = boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name=REGION
    )
    return session.client("s3", endpoint_url=moto_endpoint)


@pytest.fixture
def s3_bucket(s3_client: Any, aws_credentials: None) -> Iterator[str]:
    name = f"test-{uuid.uuid4().hex[:12]}"
    s3_client.create_bucket(Bucket=name)
    yield name
    for page in s3_client.get_paginator("list_objects_v2").paginate(Bucket=name):
        keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
        if keys:
            s3_client.delete_objects(Bucket=name, Delete={"Objects": keys, "Quiet": True})
    for upload in s3_client.list_multipart_uploads(Bucket=name).get("Uploads", []):
        s3_client.abort_multipart_upload(Bucket=name, Key=upload["Key"], UploadId=upload["UploadId"])
    s3_client.delete_bucket(Bucket=name)


@pytest.fixture
def s3_storage(moto_endpoint: str, s3_bucket: str) -> S3FileStorage:
    return S3FileStorage(bucket=s3_bucket, endpoint_url=moto_endpoint, region_name=REGION)


@pytest.fixture
def s3_proxy(moto_endpoint: str) -> Iterator[FaultProxy]:
    proxy = FaultProxy(moto_endpoint).start()
    try:
        yield proxy
    finally:
        proxy.stop()
