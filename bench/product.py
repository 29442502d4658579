"""The product as `make up` runs it (`expert-pipeline up`: status API, embedding server, Dagster
daemon and UI), in a temporary home, for the benchmarks that time or weigh it from outside."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RunningProduct:
    url: str
    home: Path
    launcher: subprocess.Popen[bytes]

    def processes(self) -> list[psutil.Process]:
        """The launcher and everything it started (servers, code servers, run workers)."""
        root = psutil.Process(self.launcher.pid)
        return [root, *root.children(recursive=True)]

    def rss_mb(self) -> float:
        """Summed resident memory: counts shared libraries once per process that maps them."""
        total = 0
        for proc in self.processes():
            with contextlib.suppress(psutil.Error):
                total += proc.memory_info().rss
        return total / 2**20

    def pss_by_role_mb(self) -> dict[str, float]:
        """Summed PSS per kind of process, named from its command line."""
        roles: dict[str, float] = {}
        for proc in self.processes():
            with contextlib.suppress(psutil.Error):
                role = _role(" ".join(proc.cmdline()), proc.pid == self.launcher.pid)
                roles[role] = roles.get(role, 0.0) + proc.memory_full_info().pss / 2**20
        return roles

    def pss_mb(self) -> float:
        """Summed proportional memory (the kernel's PSS): shared pages divided among the
        processes sharing them, so the sum is what the product really occupies."""
        total = 0
        for proc in self.processes():
            with contextlib.suppress(psutil.Error):
                total += proc.memory_full_info().pss
        return total / 2**20


_ROLES = (
    ("status_api.main", "status API"),
    ("embedding_server", "embedding server"),
    ("api grpc", "code server"),
    ("dagster-webserver", "Dagster UI"),
    ("dagster-daemon", "Dagster daemon"),
    ("from multiprocessing.forkserver", "forkserver and runs"),
    ("resource_tracker", "other"),
    ("multiprocessing", "extraction workers"),
    ("tesseract", "OCR"),
)


def _role(cmdline: str, launcher: bool) -> str:
    if launcher:
        return "launcher"
    return next((role for part, role in _ROLES if part in cmdline), "other")


def wait_ready(url: str, timeout: float = 180) -> None:
    """Until /healthz says the pipeline can take work (daemon up, code location loaded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError, ValueError):
            answer = httpx.get(f"{url}/healthz", timeout=2)
            pipeline = answer.json().get("pipeline") or {}
            if answer.status_code == 200 and pipeline.get("status") == "ok":
                return
        time.sleep(0.3)
    raise RuntimeError(f"the product at {url} did not become ready in {timeout:.0f} s")


@contextlib.contextmanager
def running_product(**settings: str) -> Iterator[RunningProduct]:
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        port = free_port()
        env = {
            **{k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "DAGSTER_PG_URL", "DAGSTER_HOME")},
            "EXPERT_PIPELINE_HOME": str(home),
            "STATUS_API_PORT": str(port),
            "DAGSTER_WEBSERVER_PORT": str(free_port()),
            **settings,
        }
        launcher = subprocess.Popen(
            [str(Path(sys.executable).parent / "expert-pipeline"), "up"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            wait_ready(url)
            yield RunningProduct(url=url, home=home, launcher=launcher)
        finally:
            os.killpg(launcher.pid, signal.SIGTERM)
            launcher.wait(timeout=60)
