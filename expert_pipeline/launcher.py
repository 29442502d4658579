"""Run the product's servers together for `make up`, and stop them all on Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from expert_pipeline.core.db import migrate
from expert_pipeline.core.settings import get_settings

REPO_ROOT = Path(__file__).resolve().parent.parent


LOCAL_HOST = "127.0.0.1"


def api_host(configured: str, database_url: str) -> str:
    """Where the status API listens: without any API token the API is open (local mode), so it
    is bound to this machine whatever STATUS_API_HOST says."""
    from sqlalchemy.orm import Session

    from expert_pipeline.core.auth import any_tokens
    from expert_pipeline.core.db import engine_for

    with Session(engine_for(database_url)) as session:
        tokens = any_tokens(session)
    if tokens or configured == LOCAL_HOST:
        return configured
    print(
        f"no API tokens: local mode, open to this machine only; binding the status API to {LOCAL_HOST} "
        f"instead of STATUS_API_HOST={configured}. Create a token first "
        "(expert-pipeline tokens create --owner NAME) to serve other machines.",
        flush=True,
    )
    return LOCAL_HOST


def run_servers(api_only: bool = False) -> int:
    settings = get_settings()
    settings.ensure_dirs()
    migrate(settings.resolved_database_url)
    host = api_host(settings.status_api_host, settings.resolved_database_url)
    env = {**os.environ, "EXPERT_PIPELINE_HOME": str(settings.expert_pipeline_home)}
    bin_dir = Path(sys.executable).parent
    commands: dict[str, list[str]] = {
        "status API": [
            str(bin_dir / "uvicorn"), "status_api.main:create_app", "--factory",
            "--host", host, "--port", str(settings.status_api_port),
            # Open live streams (SSE) would otherwise hold a shutdown for the full kill delay.
            "--timeout-graceful-shutdown", "3",
        ],
    }
    urls = {"status API": f"http://{host}:{settings.status_api_port}/docs"}
    if not api_only:
        dagster_home = settings.dagster_home
        dagster_home.mkdir(parents=True, exist_ok=True)
        _install_instance_config(dagster_home)
        env["DAGSTER_HOME"] = str(dagster_home)
        workspace = str(REPO_ROOT / "workspace.yaml")
        commands["Dagster UI"] = [
            str(bin_dir / "dagster-webserver"), "-w", workspace,
            "-h", "127.0.0.1", "-p", str(settings.dagster_webserver_port),
        ]
        commands["Dagster daemon"] = [str(bin_dir / "dagster-daemon"), "run", "-w", workspace]
        urls["Dagster UI"] = f"http://127.0.0.1:{settings.dagster_webserver_port}"
        urls["dashboard"] = f"http://{host}:{settings.status_api_port}/dashboard"

    # `kill` and service managers send SIGTERM; stop the children then too, not only on Ctrl-C.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    processes = {
        name: subprocess.Popen(cmd, env=env, cwd=REPO_ROOT, start_new_session=True)
        for name, cmd in commands.items()
    }
    for name, url in urls.items():
        print(f"  {name:15s} {url}", flush=True)
    print("Press Ctrl-C to stop.", flush=True)
    try:
        while True:
            for name, proc in processes.items():
                if proc.poll() is not None:
                    print(f"{name} exited with code {proc.returncode}; stopping the others", flush=True)
                    return proc.returncode or 1
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("stopping...", flush=True)
        return 0
    finally:
        _stop_all(list(processes.values()))


def _stop_all(processes: list[subprocess.Popen[bytes]]) -> None:
    for proc in processes:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    for proc in processes:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


POSTGRES_STORAGE = """
# Added because DAGSTER_PG_URL is set: runs, events and schedules in PostgreSQL.
storage:
  postgres:
    postgres_url:
      env: DAGSTER_PG_URL
"""


def instance_config(use_postgres: bool) -> str:
    """The repo's dagster.yaml, plus dagster-postgres storage when DAGSTER_PG_URL is set."""
    text = (REPO_ROOT / "dagster.yaml").read_text()
    return text + POSTGRES_STORAGE if use_postgres else text


def _install_instance_config(dagster_home: Path) -> None:
    """Dagster reads dagster.yaml from DAGSTER_HOME; the repo's copy stays authoritative."""
    target = dagster_home / "dagster.yaml"
    wanted = instance_config(bool(os.environ.get("DAGSTER_PG_URL")))
    if not target.exists() or target.read_text() != wanted:
        target.write_text(wanted)
