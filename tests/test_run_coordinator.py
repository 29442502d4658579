"""The run queue as `make up` configures it: looked at five times a second, Dagster's limits kept.

That the daemon really dequeues and launches with it is what tests/test_launcher.py sees on a real
`expert-pipeline up`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
from dagster._daemon.controller import create_daemon_of_type
from dagster._daemon.run_coordinator.queued_run_coordinator_daemon import QueuedRunCoordinatorDaemon

from expert_pipeline.cli.up import instance_config
from expert_pipeline.ingest import prompt_run_coordinator
from expert_pipeline.ingest.forked_run_launcher import ForkedRunLauncher
from expert_pipeline.ingest.prompt_run_coordinator import PromptRunCoordinator


def test_the_product_instance_looks_at_its_queue_five_times_a_second_and_keeps_the_run_cap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ForkedRunLauncher, "warm_up", lambda self: None)  # no forkserver in the test process
    (tmp_path / "dagster.yaml").write_text(instance_config(use_postgres=False))
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        coordinator = instance.run_coordinator
        assert isinstance(coordinator, PromptRunCoordinator)
        # Dagster's loop (half-second sleeps) waits nothing: the coordinator paces each look itself.
        daemon = create_daemon_of_type(QueuedRunCoordinatorDaemon.daemon_type(), instance)
        assert daemon.interval_seconds == coordinator.dequeue_interval_seconds == 0.0
        assert coordinator._prompt_interval == 0.2
        queue = instance.get_concurrency_config().run_queue_config
        assert queue is not None and queue.max_concurrent_runs == 4


def test_the_daemon_starting_its_queue_loop_warms_the_run_launcher_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    warmed: list[ForkedRunLauncher] = []
    monkeypatch.setattr(ForkedRunLauncher, "warm_up", lambda self: warmed.append(self))
    (tmp_path / "dagster.yaml").write_text(instance_config(use_postgres=False))
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        assert warmed == []  # the webserver builds the same instance: nothing started for it
        create_daemon_of_type(QueuedRunCoordinatorDaemon.daemon_type(), instance)
        create_daemon_of_type(QueuedRunCoordinatorDaemon.daemon_type(), instance)
        assert warmed == [instance.run_launcher]  # the first run will not wait for its imports


class _Clock:
    """time for the paced loop: monotonic() reads `now`, sleep() advances it and is recorded."""

    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_each_look_at_the_queue_waits_out_the_rest_of_the_interval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ForkedRunLauncher, "warm_up", lambda self: None)
    # Restored after the test: the coordinator replaces the daemon's iteration in this process.
    monkeypatch.setattr(QueuedRunCoordinatorDaemon, "run_iteration", QueuedRunCoordinatorDaemon.run_iteration)
    clock = _Clock()
    monkeypatch.setattr(prompt_run_coordinator, "time", clock)
    looks: list[float] = []

    def look(_daemon: object, _context: object) -> Iterator[None]:
        looks.append(clock.now)
        yield None

    monkeypatch.setattr(prompt_run_coordinator, "_dagster_look_at_queue", look)
    (tmp_path / "dagster.yaml").write_text(instance_config(use_postgres=False))
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        daemon = create_daemon_of_type(QueuedRunCoordinatorDaemon.daemon_type(), instance)
        list(daemon.run_iteration(None))  # type: ignore[arg-type]
        clock.now += 0.05  # Dagster's loop comes back at once (interval 0)
        list(daemon.run_iteration(None))  # type: ignore[arg-type]
        clock.now += 0.5  # a slow look: the next one does not wait at all
        list(daemon.run_iteration(None))  # type: ignore[arg-type]
    assert clock.slept == [pytest.approx(0.15)]
    assert looks == [pytest.approx(100.0), pytest.approx(100.2), pytest.approx(100.7)]
