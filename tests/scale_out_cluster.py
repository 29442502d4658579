"""A scale-out deployment on one machine, for tests and benchmarks: separate network hosts.

The scheduler (the Dagster daemon, its code server and run workers) runs in this process's
own namespace; each worker host (`expert-pipeline worker`) is a network namespace of its own
with its own hostname and EXPERT_PIPELINE_HOME, the other homes hidden from it. PostgreSQL
(progress and Dagster storage), the Redis broker, S3 (moto) and the OpenAI and Pinecone
stand-ins listen on the bridge's address only, so the hosts reach them over the veth network.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
from sqlalchemy import create_engine, select, text
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from expert_pipeline.cli.instance_storage import prepare_instance
from expert_pipeline.cli.up import REPO_ROOT, instance_config
from expert_pipeline.core.db import migrate
from expert_pipeline.core.models import ExpertProcessingProgress, ProgressEvent
from expert_pipeline.core.settings import Settings
from tests import netns
from tests.fixture_documents import make_pdf, sample_paragraphs
from tests.openai_standin import API_KEY as OPENAI_KEY
from tests.openai_standin import OpenAIStandin
from tests.pinecone_standin import API_KEY as PINECONE_KEY
from tests.pinecone_standin import PineconeStandin
from tests.postgres_cluster import PostgresCluster, find_pg_bin
from tests.threaded_server import ThreadedServer

BIN = Path(sys.executable).parent
HOSTS = ("host-a", "host-b")
DIMENSIONS = 8


class _BridgePostgres(PostgresCluster):
    """The private cluster, also listening on the bridge, trusting the hosts' subnet."""

    def __init__(self, pg_bin: Path, address: str) -> None:
        super().__init__(pg_bin)
        self.address = address

    def init(self) -> _BridgePostgres:
        super().init()
        subnet = self.address.rsplit(".", 2)[0] + ".0.0/16"
        with open(self.data / "pg_hba.conf", "a") as hba:
            hba.write(f"host all all {subnet} trust\n")
        return self

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1,{self.address} -c fsync=off "
            "-c max_connections=300"
        )
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "30", "start"
        )

    def url_for(self, database: str) -> str:
        return f"postgresql://postgres@{self.address}:{self.port}/{database}"


class _ServedOn(ThreadedServer):
    """A stand-in's app served on `host` (the bridge) instead of the loopback."""

    def __init__(self, app: Any, host: str, name: str) -> None:
        super().__init__(app, name=name, lifespan="off")
        self._socket.close()
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, 0))
        self.port = self._socket.getsockname()[1]
        self.url = f"http://{host}:{self.port}"
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self._socket]}, name=name, daemon=True
        )


class _Broker:
    """The private Redis, which a test may restart."""

    def __init__(self, command: list[str], log: Path, processes: list[subprocess.Popen[bytes]]) -> None:
        self.command, self.log, self.processes = command, log, processes
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(self.command, stdout=out, stderr=subprocess.STDOUT)
        self.processes.append(self.proc)

    def restart(self, down_seconds: float = 2.0) -> None:
        assert self.proc is not None
        self.proc.terminate()  # as a service manager restarts it (Redis writes its AOF and exits)
        self.proc.wait(timeout=30)
        time.sleep(down_seconds)
        self.start()


@dataclass
class Cluster:
    hosts: netns.Hosts
    env: dict[str, str]
    settings: Settings
    progress_url: str
    pinecone: PineconeStandin
    openai: OpenAIStandin
    root: Path
    base_env: dict[str, str]
    processes: list[subprocess.Popen[bytes]]
    broker: _Broker
    workers: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start_worker(self, name: str, concurrency: int = 1) -> subprocess.Popen[bytes]:
        """`expert-pipeline worker` on host `name`, its home its own, every other home hidden."""
        home = self.root / name
        others = [self.settings.expert_pipeline_home, *(self.root / n for n in self.hosts.names if n != name)]
        command = [
            str(BIN / "expert-pipeline"),
            "worker",
            "--queues",
            "ingest,embed",
            "--concurrency",
            str(concurrency),
        ]
        proc = self.hosts.popen(
            name, command, {**self.base_env, "EXPERT_PIPELINE_HOME": str(home)},
            hide=others, log=self.root / f"{name}.log", cwd=home,
        )  # fmt: skip
        self.workers[name] = proc
        self.processes.append(proc)
        return proc

    def worker_log(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def logs(self) -> str:
        daemon = (self.root / "daemon.log").read_text(errors="replace")[-3000:]
        return "\n".join([f"--- daemon\n{daemon}", *(f"--- {n}\n{self.worker_log(n)}" for n in self.workers)])


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def unavailable() -> str | None:
    """Why the cluster cannot be made here, or None."""
    reason = netns.unavailable()
    if reason is not None:
        return f"separate hosts need network namespaces: {reason}"
    if find_pg_bin() is None or shutil.which("redis-server") is None:
        return "the scale-out cluster needs PostgreSQL server binaries and redis-server"
    return None


@contextlib.contextmanager
def scale_out_cluster(
    tmp_path: Path,
    hosts_names: Sequence[str] = HOSTS,
    *,
    workers: Sequence[str] | None = None,
    concurrent_runs: int = 6,
    openai_delay: float = 0.4,
    visibility_timeout: float = 20,
) -> Iterator[Cluster]:
    """Services on the bridge, the scheduler here, a worker on each host in `workers` (default:
    all). The environment of this process is the deployment's while the cluster runs."""
    pg_bin = find_pg_bin()
    redis_server = shutil.which("redis-server")
    assert pg_bin is not None and redis_server is not None, unavailable()
    saved_env = dict(os.environ)
    started: list[Any] = []
    processes: list[subprocess.Popen[bytes]] = []
    with netns.Hosts(hosts_names) as hosts:
        gateway = hosts.gateway
        try:
            postgres = _BridgePostgres(pg_bin, gateway).init()
            postgres.start()
            started.append(postgres.destroy)
            admin = create_engine(postgres.url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
            with admin.connect() as conn:
                conn.execute(text("CREATE DATABASE progress"))
                conn.execute(text("CREATE DATABASE dagster"))
            admin.dispose()

            redis_port = _free_port(gateway)
            # Persistent, as the README asks of a production broker: queued steps survive a restart.
            broker_command = [
                redis_server, "--bind", gateway, "--port", str(redis_port), "--save", "",
                "--appendonly", "yes", "--appendfsync", "always", "--dir", str(tmp_path), "--protected-mode", "no",
            ]  # fmt: skip
            broker = _Broker(broker_command, tmp_path / "redis.log", processes)
            broker.start()

            from moto.server import ThreadedMotoServer

            moto = ThreadedMotoServer(ip_address=gateway, port=_free_port(gateway), verbose=False)
            moto.start()
            started.append(moto.stop)
            s3_endpoint = "http://{}:{}".format(*moto.get_host_and_port())

            openai = OpenAIStandin(delay=openai_delay)  # embedding lasts long enough to lose a host during it
            openai._http = _ServedOn(openai._app(), gateway, "the OpenAI stand-in").__enter__()
            started.append(openai._http.__exit__)
            pinecone = PineconeStandin(dimension=DIMENSIONS)
            pinecone._http = _ServedOn(pinecone._app(), gateway, "the Pinecone stand-in").__enter__()
            started.append(pinecone._http.__exit__)

            scheduler_home = tmp_path / "scheduler"
            env = {
                "DATABASE_URL": postgres.url_for("progress"), "DAGSTER_PG_URL": postgres.url_for("dagster"),
                "FILE_STORAGE": "s3", "S3_BUCKET": "scale-out", "AWS_ENDPOINT_URL": s3_endpoint,
                "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1",
                "EMBEDDING_PROVIDER": "openai", "OPENAI_API_KEY": OPENAI_KEY,
                "OPENAI_BASE_URL": f"{openai._http.url}/v1", "OPENAI_EMBEDDING_DIMENSIONS": str(DIMENSIONS),
                "VECTOR_STORE": "pinecone", "PINECONE_API_KEY": PINECONE_KEY, "PINECONE_INDEX_HOST": pinecone._http.url,
                "EXECUTOR": "celery", "CELERY_BROKER_URL": f"redis://{gateway}:{redis_port}/0",
                # A lost host's step goes to the other one after this long (steps here take ~2-7 s).
                "CELERY_VISIBILITY_TIMEOUT_SECONDS": str(visibility_timeout),
                "EMBEDDING_BATCH_SIZE": "4", "PROGRESS_MIN_WRITE_INTERVAL_SECONDS": "0.1",
                "EMBEDDING_SERVER": "off",
            }  # fmt: skip
            os.environ.update(env)
            for key in ("DAGSTER_HOME", "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
                os.environ.pop(key, None)
            boto3.client(
                "s3", endpoint_url=s3_endpoint, region_name="us-east-1",
                aws_access_key_id="testing", aws_secret_access_key="testing",
            ).create_bucket(Bucket="scale-out")  # fmt: skip

            settings = Settings(expert_pipeline_home=scheduler_home)
            settings.ensure_dirs()
            migrate(settings.resolved_database_url)
            os.environ["DAGSTER_PG_URL"] = settings.resolved_dagster_pg_url or ""
            settings.dagster_home.mkdir(parents=True)
            # Every run at once: their steps queue up for the hosts, none waits for a run slot.
            config = re.sub(
                r"max_concurrent_runs: \d+", f"max_concurrent_runs: {concurrent_runs}", instance_config(use_postgres=True)
            )
            assert f"max_concurrent_runs: {concurrent_runs}" in config
            (settings.dagster_home / "dagster.yaml").write_text(config)
            prepare_instance(settings.dagster_home, say=lambda _line: None)

            base = {**os.environ, "PYTHONUNBUFFERED": "1"}
            with open(tmp_path / "daemon.log", "wb") as log:
                daemon = subprocess.Popen(
                    [str(BIN / "dagster-daemon"), "run", "-w", str(REPO_ROOT / "workspace.yaml")],
                    cwd=REPO_ROOT, start_new_session=True,
                    env={**base, "EXPERT_PIPELINE_HOME": str(scheduler_home), "DAGSTER_HOME": str(settings.dagster_home)},
                    stdout=log, stderr=subprocess.STDOUT,
                )  # fmt: skip
            processes.append(daemon)

            cluster = Cluster(
                hosts, env, settings, settings.resolved_database_url, pinecone, openai, tmp_path,
                base_env={**os.environ, "PYTHONUNBUFFERED": "1"}, processes=processes, broker=broker,
            )  # fmt: skip
            for name in hosts_names:
                (tmp_path / name).mkdir()
            for name in hosts_names if workers is None else workers:
                cluster.start_worker(name)
            yield cluster
        finally:
            os.environ.clear()
            os.environ.update(saved_env)
            for proc in reversed(processes):
                if proc.poll() is None:
                    netns.kill_tree(proc)
            for stop in reversed(started):
                with contextlib.suppress(Exception):  # the next service must still be stopped
                    stop()


def small_pdf(path: Path, pages: int, seed: int) -> Path:
    return make_pdf(path, ["\n\n".join(sample_paragraphs(5, seed=seed * 100 + p)) for p in range(pages)])


class Watch:
    def __init__(self, url: str) -> None:
        self.engine = create_engine(url, poolclass=NullPool)

    def records(self) -> dict[str, ExpertProcessingProgress]:
        with Session(self.engine, expire_on_commit=False) as session:
            return {r.expert_id: r for r in session.scalars(select(ExpertProcessingProgress))}

    def events(self) -> list[ProgressEvent]:
        with Session(self.engine, expire_on_commit=False) as session:
            return list(session.scalars(select(ProgressEvent).order_by(ProgressEvent.id)))

    def embedding_on(self) -> tuple[str, str] | None:
        """(expert, host) of an expert mid-embedding, with the host that runs that step."""
        records = self.records()
        stage_hosts: dict[str, str] = {}
        for event in self.events():
            worker = (event.data or {}).get("worker")
            if worker and event.stage == "embedding":
                stage_hosts[event.expert_id] = worker
        for expert_id, record in records.items():
            if (
                record.stage == "embedding" and record.status == "in_progress"
                and 0 < record.current_chunk < record.total_chunks * 0.6 and expert_id in stage_hosts
            ):  # fmt: skip
                return expert_id, stage_hosts[expert_id]
        return None
