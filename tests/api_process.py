"""The status API as users start it: `uvicorn status_api.main:create_app --factory` in a process
of its own, its log (access log included) in a file. For what a thread cannot show: the
server's own memory, its real log lines, a bind address other than 127.0.0.1."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil

from expert_pipeline.core.settings import Settings
from tests.conftest import free_port
from tests.waiting import wait_for

BIN = Path(sys.executable).parent


class ApiProcess:
    def __init__(self, settings: Settings, log_path: Path, host: str = "127.0.0.1") -> None:
        self.port = free_port()
        self.host = host
        self.log_path = log_path
        env = {**os.environ, "EXPERT_PIPELINE_HOME": str(settings.expert_pipeline_home),
               "DATABASE_URL": settings.resolved_database_url}
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            [str(BIN / "uvicorn"), "status_api.main:create_app", "--factory", "--host", host,
             "--port", str(self.port), "--log-level", "info"],
            env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )

    def url(self, address: str = "127.0.0.1") -> str:
        return f"http://{address}:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def rss(self) -> int:
        return int(psutil.Process(self.proc.pid).memory_info().rss)

    def __enter__(self) -> ApiProcess:
        def started() -> bool:
            assert self.proc.poll() is None, f"the API exited:\n{self.log()}"
            return "Application startup complete" in self.log()

        wait_for("the API process to start", started, timeout=60)
        return self

    def __exit__(self, *_: object) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self._log.close()
