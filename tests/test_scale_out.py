"""Scale-out with EXECUTOR=celery: ingest steps on two worker hosts, one of which dies mid-run.

Real processes on separate network hosts: the scheduler (the Dagster daemon, its code server
and run workers) in the test's own namespace; two worker hosts (`expert-pipeline worker`), each
a network namespace of its own with its own hostname and EXPERT_PIPELINE_HOME, and the other
homes hidden from it. PostgreSQL (progress and Dagster storage), the Redis broker, S3 (moto)
and the OpenAI and Pinecone stand-ins listen on the bridge's address only; the hosts reach
them over the veth network. Hand-over between steps goes through S3.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
from sqlalchemy import create_engine, select, text
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from expert_pipeline.adapters.file_storage import LocalFileStorage
from expert_pipeline.cli.instance_storage import prepare_instance
from expert_pipeline.cli.up import REPO_ROOT, instance_config
from expert_pipeline.core.db import migrate
from expert_pipeline.core.models import ExpertProcessingProgress, ProgressEvent
from expert_pipeline.core.settings import Settings
from expert_pipeline.ingest.shared_hand_over import SharedHandOver
from expert_pipeline.ingest.work_area import ExpertWorkArea
from expert_pipeline.jobs import build_ingest_job
from expert_pipeline.text.chunking import Chunk
from expert_pipeline.text.extraction import PageText
from tests import netns
from tests.conftest import skip_or_fail
from tests.fixture_documents import make_pdf, sample_paragraphs
from tests.openai_standin import API_KEY as OPENAI_KEY
from tests.openai_standin import OpenAIStandin
from tests.pinecone_standin import API_KEY as PINECONE_KEY
from tests.pinecone_standin import PineconeStandin
from tests.pipeline_helpers import create_expert
from tests.postgres_cluster import PostgresCluster, find_pg_bin
from tests.threaded_server import ThreadedServer
from tests.waiting import wait_for

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


@dataclass
class Cluster:
    hosts: netns.Hosts
    env: dict[str, str]
    settings: Settings
    progress_url: str
    pinecone: PineconeStandin
    openai: OpenAIStandin
    root: Path
    workers: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def worker_log(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def logs(self) -> str:
        daemon = (self.root / "daemon.log").read_text(errors="replace")[-3000:]
        return "\n".join([f"--- daemon\n{daemon}", *(f"--- {n}\n{self.worker_log(n)}" for n in HOSTS)])


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cluster]:
    reason = netns.unavailable()
    if reason is not None:
        skip_or_fail(f"separate hosts need network namespaces: {reason}")
    pg_bin = find_pg_bin()
    redis_server = shutil.which("redis-server")
    if pg_bin is None or redis_server is None:
        skip_or_fail("the scale-out test needs PostgreSQL server binaries and redis-server")
    assert pg_bin is not None and redis_server is not None
    started: list[Any] = []
    processes: list[subprocess.Popen[bytes]] = []
    with netns.Hosts(HOSTS) as hosts:
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
            with open(tmp_path / "redis.log", "wb") as log:
                redis = subprocess.Popen(
                    [redis_server, "--bind", gateway, "--port", str(redis_port), "--save", "",
                     "--appendonly", "no", "--protected-mode", "no"],
                    stdout=log, stderr=subprocess.STDOUT,
                )  # fmt: skip
            processes.append(redis)

            from moto.server import ThreadedMotoServer

            moto = ThreadedMotoServer(ip_address=gateway, port=_free_port(gateway), verbose=False)
            moto.start()
            started.append(moto.stop)
            s3_endpoint = "http://{}:{}".format(*moto.get_host_and_port())

            openai = OpenAIStandin(delay=0.4)  # embedding lasts long enough to lose a host during it
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
                "CELERY_VISIBILITY_TIMEOUT_SECONDS": "20",
                "EMBEDDING_BATCH_SIZE": "4", "PROGRESS_MIN_WRITE_INTERVAL_SECONDS": "0.1",
                "EMBEDDING_SERVER": "off",
            }  # fmt: skip
            for key, value in env.items():
                monkeypatch.setenv(key, value)
            for key in ("DAGSTER_HOME", "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
                monkeypatch.delenv(key, raising=False)
            boto3.client(
                "s3", endpoint_url=s3_endpoint, region_name="us-east-1",
                aws_access_key_id="testing", aws_secret_access_key="testing",
            ).create_bucket(Bucket="scale-out")  # fmt: skip

            settings = Settings(expert_pipeline_home=scheduler_home)
            settings.ensure_dirs()
            migrate(settings.resolved_database_url)
            os.environ["DAGSTER_PG_URL"] = settings.resolved_dagster_pg_url or ""
            settings.dagster_home.mkdir(parents=True)
            # All six runs at once: their steps queue up for the two hosts, none waits for a run slot.
            config = instance_config(use_postgres=True).replace(
                "max_concurrent_runs: 2", "max_concurrent_runs: 6"
            )
            assert "max_concurrent_runs: 6" in config
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

            homes = {name: tmp_path / name for name in HOSTS}
            for home in homes.values():
                home.mkdir()
            cluster = Cluster(
                hosts, env, settings, settings.resolved_database_url, pinecone, openai, tmp_path
            )
            for name, home in homes.items():
                others = [scheduler_home, *(h for n, h in homes.items() if n != name)]
                cluster.workers[name] = hosts.popen(
                    name,
                    [
                        str(BIN / "expert-pipeline"),
                        "worker",
                        "--queues",
                        "ingest,embed",
                        "--concurrency",
                        "1",
                    ],
                    {**base, "EXPERT_PIPELINE_HOME": str(home)},
                    hide=others,
                    log=tmp_path / f"{name}.log",
                    cwd=home,
                )
                processes.append(cluster.workers[name])
            yield cluster
        finally:
            for proc in reversed(processes):
                if proc.poll() is None:
                    netns.kill_tree(proc)
            for stop in reversed(started):
                with contextlib.suppress(Exception):  # the next service must still be stopped
                    stop()


def _pdf(path: Path, pages: int, seed: int) -> Path:
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


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_six_experts_on_two_worker_hosts_survive_losing_one(cluster: Cluster, tmp_path: Path) -> None:
    expert_ids = [
        create_expert(cluster.settings, [_pdf(tmp_path / f"doc{i}.pdf", pages=3, seed=i)], name=f"Expert {i}")
        for i in range(6)
    ]
    watch = Watch(cluster.progress_url)
    found: list[tuple[str, str]] = []

    def embedding_under_way() -> bool:
        for name, proc in cluster.workers.items():
            assert proc.poll() is None, f"{name} exited early\n{cluster.logs()}"
        hit = watch.embedding_on()
        if hit:
            found.append(hit)
        return hit is not None

    wait_for("an expert mid-embedding on a worker host", embedding_under_way, timeout=120, interval=0.1)
    victim_expert, lost_host = found[-1]
    netns.kill_tree(cluster.workers[lost_host])
    survivor = next(name for name in HOSTS if name != lost_host)

    def all_finished() -> bool:
        assert cluster.workers[survivor].poll() is None, cluster.logs()
        records = watch.records()
        return len(records) == 6 and all(
            r.status in ("completed", "failed", "cancelled") for r in records.values()
        )

    wait_for("every expert to finish", all_finished, timeout=150, interval=0.5)
    records = watch.records()
    assert {r.status for r in records.values()} == {"completed"}, (
        {k: (r.status, r.error_message) for k, r in records.items()},
        cluster.logs(),
    )
    events = watch.events()
    # Both hosts ran stages, and the history names the host of each stage.
    hosts_seen = {(e.data or {}).get("worker") for e in events} - {None}
    assert hosts_seen == set(HOSTS), hosts_seen
    for expert_id in expert_ids:
        record = records[expert_id]
        assert record.progress_percentage == 100.0
        # One vector per chunk: the step redone on the other host did not double anything.
        assert cluster.pinecone.stored_count(expert_id) == record.total_chunks > 0, expert_id
    # The expert whose embedding was lost says so, and the survivor took the step over.
    lost = [
        e.data for e in events
        if e.expert_id == victim_expert and (e.data or {}).get("kind") == "worker_lost"
    ]  # fmt: skip
    assert lost and lost[0]["lost_worker"] == lost_host and lost[0]["worker"] == survivor, (
        [(e.message, e.data) for e in events if e.expert_id == victim_expert],
        cluster.logs(),
    )


# --- configuration and hand-over, without processes ------------------------------------------


def test_executor_is_chosen_by_configuration() -> None:
    assert build_ingest_job(Settings()).executor_def.name == "in_process"
    celery = build_ingest_job(Settings(executor="celery", celery_broker_url="redis://broker:6379/0"))
    assert celery.executor_def.name == "celery" and {h.name for h in celery.hooks} == {"shared_hand_over"}
    with pytest.raises(ValueError, match="CELERY_BROKER_URL"):
        build_ingest_job(Settings(executor="celery"))


def test_a_step_on_another_host_gets_what_the_previous_one_wrote(tmp_path: Path) -> None:
    storage = LocalFileStorage(root=str(tmp_path / "storage"))
    first = ExpertWorkArea(tmp_path / "host-a" / "work" / "e1", "run-1")
    first.write_pages("f1", [PageText(page=1, text="alpha"), PageText(page=2, text="beta")])
    first.write_chunks("f1", [Chunk(text="alpha beta", filename="a.pdf", page=1, index=0, token_count=2)])
    hand_over = SharedHandOver(storage, "e1", "run-1")
    assert hand_over.push(first, "expert_text") == 1
    assert hand_over.push(first, "expert_chunks") == 1

    second = ExpertWorkArea(tmp_path / "host-b" / "work" / "e1", "run-1")
    assert hand_over.pull(second, "expert_chunks") == 1  # chunking reads the page text only
    assert [p.text for p in second.read_pages("f1")] == ["alpha", "beta"]
    assert not second.chunks_path("f1").exists()
    assert hand_over.pull(second, "expert_embeddings") == 1
    assert [c.text for c in second.read_chunks("f1")] == ["alpha beta"]
    assert hand_over.pull(second, "expert_embeddings") == 0  # already here, same size
    # A run whose earlier step wrote nothing (every file already indexed) pulls nothing.
    assert SharedHandOver(storage, "e1", "run-2").pull(second, "expert_vectors") == 0
    assert hand_over.forget_expert() > 0
    assert storage.list_folders("work") == []
