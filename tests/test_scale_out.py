"""Scale-out with EXECUTOR=celery: ingest steps on two worker hosts, one of which dies mid-run.

Real processes on separate network hosts: the scheduler (the Dagster daemon, its code server
and run workers) in the test's own namespace; two worker hosts (`expert-pipeline worker`), each
a network namespace of its own with its own hostname and EXPERT_PIPELINE_HOME, and the other
homes hidden from it. PostgreSQL (progress and Dagster storage), the Redis broker, S3 (moto)
and the OpenAI and Pinecone stand-ins listen on the bridge's address only; the hosts reach
them over the veth network. Hand-over between steps goes through S3.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from expert_pipeline.adapters.file_storage import LocalFileStorage
from expert_pipeline.core.settings import Settings
from expert_pipeline.ingest.shared_hand_over import HandOverMissing, SharedHandOver
from expert_pipeline.ingest.work_area import ExpertWorkArea
from expert_pipeline.jobs import build_ingest_job
from expert_pipeline.text.chunking import Chunk
from tests import netns
from tests.conftest import skip_or_fail
from tests.pipeline_helpers import create_expert
from tests.scale_out_cluster import HOSTS, Cluster, Watch, scale_out_cluster, small_pdf, unavailable
from tests.waiting import wait_for


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    reason = unavailable()
    if reason is not None:
        skip_or_fail(reason)
    with scale_out_cluster(tmp_path) as cluster:
        yield cluster


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_six_experts_on_two_worker_hosts_survive_losing_one(cluster: Cluster, tmp_path: Path) -> None:
    expert_ids = [
        create_expert(
            cluster.settings, [small_pdf(tmp_path / f"doc{i}.pdf", pages=3, seed=i)], name=f"Expert {i}"
        )
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
    fetched = first.fetched_path("f1", "a.txt")
    fetched.parent.mkdir(parents=True)
    fetched.write_text("alpha beta")
    first.write_chunks("f1", [Chunk(text="alpha beta", filename="a.txt", page=1, index=0, token_count=2)])
    hand_over = SharedHandOver(storage, "e1", "run-1")
    assert hand_over.push(first, "expert_files") == 1
    assert hand_over.push(first, "expert_chunks") == 1

    second = ExpertWorkArea(tmp_path / "host-b" / "work" / "e1", "run-1")
    assert hand_over.pull(second, "expert_chunks") == 1  # reading and chunking need the fetched files only
    assert second.fetched_path("f1", "a.txt").read_text() == "alpha beta"
    assert not second.chunks_path("f1").exists()
    assert hand_over.pull(second, "expert_embeddings") == 1
    assert [c.text for c in second.read_chunks("f1")] == ["alpha beta"]
    assert hand_over.pull(second, "expert_embeddings") == 0  # already here, same size
    # A step that wrote nothing (every file already indexed) still hands over an empty manifest.
    empty = ExpertWorkArea(tmp_path / "host-a" / "work" / "e1", "run-2")
    assert SharedHandOver(storage, "e1", "run-2").push(empty, "expert_embeddings") == 0
    with pytest.raises(HandOverMissing, match="expert_chunks"):  # never stored: said, not guessed
        SharedHandOver(storage, "e1", "run-2").pull(second, "expert_vectors")
    assert hand_over.forget_expert() > 0
    assert storage.list_folders("work") == []


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_broker_restart_mid_run_is_ridden_out(cluster: Cluster, tmp_path: Path) -> None:
    """Redis restarted (persistent, as the README asks) while steps are queued and running: the
    run workers wait it out and every expert completes, without a failed run."""
    expert_ids = [
        create_expert(
            cluster.settings, [small_pdf(tmp_path / f"doc{i}.pdf", pages=3, seed=10 + i)], name=f"E{i}"
        )
        for i in range(3)
    ]
    watch = Watch(cluster.progress_url)

    def under_way() -> bool:
        return any(
            r.status == "in_progress" and r.stage != "file_processing" for r in watch.records().values()
        )

    wait_for("an expert past fetching", under_way, timeout=120, interval=0.1)
    cluster.broker.restart(down_seconds=2.0)

    def all_finished() -> bool:
        records = watch.records()
        return len(records) == 3 and all(
            r.status in ("completed", "failed", "cancelled") for r in records.values()
        )

    wait_for("every expert to finish", all_finished, timeout=120, interval=0.5)
    records = watch.records()
    assert {records[e].status for e in expert_ids} == {"completed"}, (
        {k: (r.status, r.error_message) for k, r in records.items()},
        cluster.logs(),
    )
    messages = [e.message for e in watch.events()]
    assert not any("Processing restarted automatically" in m for m in messages), messages
    for expert_id in expert_ids:
        assert cluster.pinecone.stored_count(expert_id) == records[expert_id].total_chunks > 0
