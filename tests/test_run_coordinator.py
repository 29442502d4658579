"""The run queue as `make up` configures it: looked at twice a second, Dagster's limits kept.

That the daemon really dequeues and launches with it is what tests/test_launcher.py sees on a real
`expert-pipeline up`.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest
from dagster._daemon.controller import create_daemon_of_type
from dagster._daemon.run_coordinator.queued_run_coordinator_daemon import QueuedRunCoordinatorDaemon

from expert_pipeline.cli.up import instance_config
from expert_pipeline.ingest.forked_run_launcher import ForkedRunLauncher
from expert_pipeline.ingest.prompt_run_coordinator import PromptRunCoordinator


def test_the_product_instance_looks_at_its_queue_twice_a_second_and_keeps_the_run_cap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ForkedRunLauncher, "warm_up", lambda self: None)  # no forkserver in the test process
    (tmp_path / "dagster.yaml").write_text(instance_config(use_postgres=False))
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        coordinator = instance.run_coordinator
        assert isinstance(coordinator, PromptRunCoordinator)
        # The daemon built from this instance sleeps half a second between looks, not Dagster's whole seconds.
        daemon = create_daemon_of_type(QueuedRunCoordinatorDaemon.daemon_type(), instance)
        assert daemon.interval_seconds == coordinator.dequeue_interval_seconds == 0.5
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
