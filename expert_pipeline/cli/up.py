"""Run the product's servers together for `make up`, and stop them all on Ctrl-C."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import psutil

from expert_pipeline.adapters.parts_description import describe_parts
from expert_pipeline.cli.console import ExpertWatcher, relay, say
from expert_pipeline.core.settings import get_settings

REPO_ROOT = Path(__file__).resolve().parents[2]


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


def run_servers(api_only: bool = False, verbose: bool = False) -> int:
    settings = get_settings()
    settings.ensure_dirs()
    for role, part in describe_parts(settings).items():
        say(f"  {role:17s} {part}")
    env = {**os.environ, "EXPERT_PIPELINE_HOME": str(settings.expert_pipeline_home)}
    # Each thread of a Python server gets a malloc arena of its own; two are plenty for these
    # (~30 MB less in all at 4 ingests). Not for the model server below: its encoder's threads
    # allocate at once, and throughput comes first there. An explicit setting is kept.
    env.setdefault("MALLOC_ARENA_MAX", "2")
    own_env: dict[str, dict[str, str]] = {}
    dagster_home = settings.dagster_home
    if not api_only:
        dagster_home.mkdir(parents=True, exist_ok=True)
        if settings.resolved_dagster_pg_url:
            # Every URL form the README accepts, spelled the way dagster-postgres needs it.
            env["DAGSTER_PG_URL"] = settings.resolved_dagster_pg_url
        _install_instance_config(dagster_home, use_postgres=bool(env.get("DAGSTER_PG_URL")))
        env["DAGSTER_HOME"] = str(dagster_home)
    prepare = [
        sys.executable,
        "-m",
        "expert_pipeline.cli.prepare",
        *([] if api_only else [str(dagster_home)]),
    ]
    if subprocess.run(prepare, env=env, check=False).returncode != 0:
        return 1
    host = api_host(settings.status_api_host, settings.resolved_database_url)
    bin_dir = Path(sys.executable).parent
    commands: dict[str, list[str]] = {
        "status API": [
            str(bin_dir / "uvicorn"),
            "status_api.main:create_app",
            "--factory",
            "--host",
            host,
            "--port",
            str(settings.status_api_port),
            # Open live streams (SSE) would otherwise hold a shutdown for the full kill delay.
            "--timeout-graceful-shutdown",
            "3",
        ],
    }
    urls = {"status API": f"http://{host}:{settings.status_api_port}/docs"}
    after_code_server: dict[str, list[str]] = {}
    code_socket: Path | None = None
    inherited: dict[str, tuple[int, ...]] = {}
    if (
        not api_only
        and settings.embedding_provider == "local"
        and settings.embedding_server == "auto"
        and not settings.embedding_server_url
    ):
        listener = _listen(settings.embedding_server_port)
        port = listener.getsockname()[1]
        # Every run and the API reach the one model through this URL (their settings read it).
        env["EMBEDDING_SERVER_URL"] = f"http://{LOCAL_HOST}:{port}/v1"
        commands["embedding server"] = [
            str(bin_dir / "uvicorn"),
            "expert_pipeline.embedding_server.app:create_app",
            "--factory",
            "--fd",
            str(listener.fileno()),
            "--timeout-graceful-shutdown",
            "3",
        ]
        inherited["embedding server"] = (listener.fileno(),)
        own_env["embedding server"] = dict(env)
        if "MALLOC_ARENA_MAX" not in os.environ:
            del own_env["embedding server"]["MALLOC_ARENA_MAX"]
        urls["embedding server"] = f"{env['EMBEDDING_SERVER_URL']}/embeddings"
    if not api_only:
        # One code server for the webserver and the daemon (each would otherwise start its own,
        # ~130 MB apiece); they wait for it, the other servers start meanwhile.
        code_socket = (
            Path(tempfile.mkdtemp(prefix="expert-pipeline-")) / "code.sock"
        )  # short: a UDS path <= 107 bytes
        commands["code server"] = [
            str(bin_dir / "dagster"),
            "api",
            "grpc",
            "-m",
            "expert_pipeline.definitions",
            "-d",
            str(REPO_ROOT),
            "--socket",
            str(code_socket),
            "--location-name",
            CODE_LOCATION,
        ]
        workspace = str(_shared_workspace(dagster_home, code_socket))
        after_code_server["Dagster UI"] = [
            str(bin_dir / "dagster-webserver"),
            "-w",
            workspace,
            "-h",
            "127.0.0.1",
            "-p",
            str(settings.dagster_webserver_port),
        ]
        # Sensors tick every second; their INFO lines go to the log file, not the console.
        after_code_server["Dagster daemon"] = [str(bin_dir / "dagster-daemon"), "run", "-w", workspace]
        urls["Dagster UI"] = f"http://127.0.0.1:{settings.dagster_webserver_port}"
        env["DAGSTER_GRAPHQL_URL"] = f"{urls['Dagster UI']}/graphql"  # the API starts runs at upload
        urls["dashboard"] = f"http://{host}:{settings.status_api_port}/dashboard"

    # Ctrl-C, `kill`, a service manager: one stop, however many signals arrive (make passes a
    # group's SIGTERM on, so it comes twice); a second one must not cut the cleanup short.
    stop = threading.Event()

    def request_stop(signum: int, _frame: object) -> None:
        if not stop.is_set():
            print(f"stopping ({signal.Signals(signum).name})...", flush=True)
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGHUP, request_stop)
    logs = settings.expert_pipeline_home / "logs"
    logs.mkdir(parents=True, exist_ok=True)

    def start(name: str, cmd: list[str]) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            cmd,
            env=own_env.get(name, env),
            cwd=REPO_ROOT,
            start_new_session=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            pass_fds=inherited.get(name, ()),
        )
        assert proc.stdout is not None
        relay(name, proc.stdout, logs / f"{name.lower().replace(' ', '-')}.log", verbose)
        return proc

    processes = {name: start(name, cmd) for name, cmd in commands.items()}
    if code_socket is not None:
        if not _serving(code_socket, processes["code server"], stop):
            stop_all(list(processes.values()))
            shutil.rmtree(code_socket.parent, ignore_errors=True)
            if stop.is_set():
                return 0
            print(
                f"the code server did not start (its log: {logs}/code-server.log)",
                file=sys.stderr,
                flush=True,
            )
            return 1
        processes.update({name: start(name, cmd) for name, cmd in after_code_server.items()})
    for name, url in urls.items():
        say(f"  {name:17s} {url}")
    say(f"  {'logs':17s} {logs}/ (warnings and errors are shown here too; --verbose shows everything)")
    say("Press Ctrl-C to stop.")
    watcher = ExpertWatcher(settings.resolved_database_url).start()
    code = 0
    try:
        while not stop.wait(0.5):
            exited = next(((n, p) for n, p in processes.items() if p.poll() is not None), None)
            if exited is not None:
                name, proc = exited
                print(
                    f"{name} exited with code {proc.returncode} (its log: {logs}); stopping the others",
                    flush=True,
                )
                code = proc.returncode or 1
                break
    finally:
        watcher.stop()
        stop_all(list(processes.values()))
        if code_socket is not None:
            shutil.rmtree(code_socket.parent, ignore_errors=True)
    return code


CODE_LOCATION = "expert_pipeline"  # as workspace.yaml names it


def _shared_workspace(dagster_home: Path, code_socket: Path) -> Path:
    """A workspace pointing the webserver and the daemon at the one code server."""
    path = dagster_home / "workspace.yaml"
    path.write_text(
        f"# Written by `expert-pipeline up`: the code server it started.\n"
        f"load_from:\n  - grpc_server:\n      socket: {code_socket}\n      location_name: {CODE_LOCATION}\n"
    )
    return path


def _serving(code_socket: Path, proc: subprocess.Popen[bytes], stop: threading.Event) -> bool:
    """Whether the code server accepts connections (it binds once the code location has loaded)."""
    while not stop.is_set() and proc.poll() is None:
        with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.connect(str(code_socket))
            return True
        stop.wait(0.1)
    return False


def _listen(port: int) -> socket.socket:
    """A listening socket on this machine, handed to the embedding server: with port 0 the port
    is known before the server starts, and no other process can take it in between."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((LOCAL_HOST, port))
    listener.listen(256)
    listener.set_inheritable(True)
    return listener


def stop_all(processes: list[subprocess.Popen[bytes]], grace: float = 15.0) -> None:
    """SIGTERM each server's process group and every descendant (a run worker may sit in a
    session of its own), wait up to `grace` seconds, then SIGKILL whatever is left."""
    victims: dict[int, psutil.Process] = {}
    for proc in processes:
        try:
            parent = psutil.Process(proc.pid)
            victims[parent.pid] = parent
            victims.update({child.pid: child for child in parent.children(recursive=True)})
        except psutil.NoSuchProcess:
            pass
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
    for victim in victims.values():
        with contextlib.suppress(psutil.NoSuchProcess):
            victim.terminate()
    _gone, alive = psutil.wait_procs(list(victims.values()), timeout=grace)
    for victim in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            victim.kill()
    for proc in processes:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # anything that joined a group after the snapshot
        proc.wait()


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


def _install_instance_config(dagster_home: Path, use_postgres: bool) -> None:
    """Dagster reads dagster.yaml from DAGSTER_HOME; the repo's copy stays authoritative."""
    target = dagster_home / "dagster.yaml"
    wanted = instance_config(use_postgres)
    if not target.exists() or target.read_text() != wanted:
        target.write_text(wanted)
