"""ForkedRunLauncher with real processes: runs forked from a preloaded forkserver complete, are
cancelled by SIGINT, and a worker killed outright is reported failed.

The tiny jobs below live here so the forkserver can preload them (this module imports only
Dagster); the real ingest job is launched this way by tests/test_launcher.py (`make up`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import psutil
import pytest
from dagster._core.launcher import WorkerStatus
from dagster._core.storage.dagster_run import DagsterRun, DagsterRunStatus

from expert_pipeline.ingest.forked_run_launcher import FORKSERVER_CMDLINE, PID_TAG, STARTED_TAG
from tests.waiting import wait_for

REPO_ROOT = Path(__file__).resolve().parents[1]
PRELOAD = ["dagster", "tests.test_forked_run_launcher"]


@dg.op
def answer() -> int:
    return 42


@dg.job(executor_def=dg.in_process_executor)
def quick_job() -> None:
    answer()


@dg.op
def wait_until_stopped() -> None:
    # Ends only when interrupted (a cancel) or after a bound, so a broken cancel fails the test.
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        time.sleep(0.05)


@dg.job(executor_def=dg.in_process_executor)
def sleepy_job() -> None:
    wait_until_stopped()


@pytest.fixture
def instance(tmp_path: Path) -> Iterator[dg.DagsterInstance]:
    (tmp_path / "dagster.yaml").write_text(
        "telemetry:\n  enabled: false\n"
        "run_launcher:\n"
        "  module: expert_pipeline.ingest.forked_run_launcher\n"
        "  class: ForkedRunLauncher\n"
        f"  config:\n    preload_modules: {PRELOAD}\n"
    )
    with dg.DagsterInstance.from_config(str(tmp_path)) as inst:
        yield inst


def _launch(instance: dg.DagsterInstance, job: dg.JobDefinition) -> DagsterRun:
    origin = dg.reconstructable(job).get_python_origin()
    run = instance.create_run_for_job(job_def=job, job_code_origin=origin)
    instance.launch_run(run.run_id, workspace=None)  # type: ignore[arg-type]
    return _run(instance, run.run_id)


def _run(instance: dg.DagsterInstance, run_id: str) -> DagsterRun:
    run = instance.get_run_by_id(run_id)
    assert run is not None
    return run


def _status_is(instance: dg.DagsterInstance, run_id: str, status: DagsterRunStatus) -> bool:
    return _run(instance, run_id).status == status


def _step_started(instance: dg.DagsterInstance, run_id: str) -> bool:
    return bool(instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_START))


def test_a_run_is_a_fork_of_the_preloaded_forkserver_and_completes(instance: dg.DagsterInstance) -> None:
    run = _launch(instance, sleepy_job)
    wait_for("the step to start", lambda: _step_started(instance, run.run_id), timeout=60)
    run = _run(instance, run.run_id)
    worker = psutil.Process(int(run.tags[PID_TAG]))
    forkserver = worker.parent()
    assert forkserver is not None and FORKSERVER_CMDLINE in " ".join(forkserver.cmdline())
    # Forked, not exec'd: the worker runs the forkserver's command line, no `dagster api` spawn.
    assert worker.cmdline() == forkserver.cmdline()
    assert "spawn_main" not in " ".join(worker.cmdline())
    assert "torch" not in " ".join(m.path for m in worker.memory_maps())
    assert instance.run_launcher.terminate(run.run_id)
    wait_for("the sleepy run to end", lambda: _run(instance, run.run_id).is_finished, timeout=60)

    done = _launch(instance, quick_job)
    wait_for(
        "the run to succeed", lambda: _status_is(instance, done.run_id, DagsterRunStatus.SUCCESS), timeout=60
    )
    events = [e.message for e in instance.all_logs(done.run_id)]
    assert any(f"Forked run worker (pid {done.tags[PID_TAG]})" in m for m in events), events
    # The forkserver reaps its children: no zombies left behind.
    wait_for(
        "the finished workers to be reaped",
        lambda: not [c for c in forkserver.children() if c.status() == psutil.STATUS_ZOMBIE],
        timeout=30,
    )


def test_terminate_interrupts_the_worker_and_the_run_ends_canceled(instance: dg.DagsterInstance) -> None:
    run = _launch(instance, sleepy_job)
    wait_for("the step to start", lambda: _step_started(instance, run.run_id), timeout=60)
    assert instance.run_launcher.terminate(run.run_id)
    wait_for(
        "the run to be canceled",
        lambda: _status_is(instance, run.run_id, DagsterRunStatus.CANCELED),
        timeout=60,
    )
    pid = int(_run(instance, run.run_id).tags[PID_TAG])
    wait_for("the worker to exit", lambda: not psutil.pid_exists(pid) or _zombie(pid), timeout=30)
    assert not instance.run_launcher.terminate(run.run_id)  # already finished


def _zombie(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_a_worker_killed_outright_is_reported_failed(instance: dg.DagsterInstance, tmp_path: Path) -> None:
    run = _launch(instance, sleepy_job)
    wait_for("the step to start", lambda: _step_started(instance, run.run_id), timeout=60)
    run = _run(instance, run.run_id)
    # Another process's view (the webserver, the daemon after a restart): only the run's tags.
    with dg.DagsterInstance.from_config(str(tmp_path)) as other:
        assert other.run_launcher.check_run_worker_health(run).status == WorkerStatus.RUNNING
        os.kill(int(run.tags[PID_TAG]), signal.SIGKILL)
        wait_for(
            "the worker to be gone",
            lambda: other.run_launcher.check_run_worker_health(run).status == WorkerStatus.FAILED,
            timeout=30,
        )
    # The launching process notices at once and fails the run, saying how the worker ended.
    wait_for(
        "the run to fail", lambda: _status_is(instance, run.run_id, DagsterRunStatus.FAILURE), timeout=30
    )
    events = [e.message for e in instance.all_logs(run.run_id)]
    assert any("was terminated by signal 9" in m for m in events), events
    # Looked at after the run was failed for it, the killed worker is still a failed one.
    with dg.DagsterInstance.from_config(str(tmp_path)) as other:
        assert other.run_launcher.check_run_worker_health(run).status == WorkerStatus.FAILED


def test_a_recorded_pid_that_is_now_another_process_is_left_alone(instance: dg.DagsterInstance) -> None:
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        run = instance.create_run_for_job(job_def=quick_job, status=DagsterRunStatus.STARTED)
        started = psutil.Process(stranger.pid).create_time()
        instance.add_run_tags(run.run_id, {PID_TAG: str(stranger.pid), STARTED_TAG: repr(started)})
        run = _run(instance, run.run_id)
        assert instance.run_launcher.check_run_worker_health(run).status == WorkerStatus.FAILED
        assert not instance.run_launcher.terminate(run.run_id)
        assert stranger.poll() is None
    finally:
        stranger.kill()
        stranger.wait()


def test_the_configured_preload_leaves_no_thread_but_lancedbs_and_no_torch(tmp_path: Path) -> None:
    """The forkserver forks from whatever importing dagster.yaml's preload left behind: a fork keeps
    a thread's locks but not the thread, so the only thread allowed is LanceDB's idle event loop,
    which LanceDB restarts in each child (its at-fork hooks); torch would cost every run hundreds
    of MB. A child forked from there really uses LanceDB (writes and reads a table)."""
    probe = (
        "import os, sys, threading, yaml\n"
        "config = yaml.safe_load(open('dagster.yaml'))['run_launcher']['config']\n"
        "for name in config['preload_modules']: __import__(name)\n"
        "from lancedb.background_loop import LOOP\n"
        "others = [t for t in threading.enumerate() if t is not threading.main_thread()]\n"
        "print(others == [LOOP.thread], 'torch' in sys.modules)\n"
        "sys.stdout.flush()\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    import lancedb, pyarrow as pa\n"
        f"    table = lancedb.connect({str(tmp_path)!r}).create_table('t', pa.table({{'v': [1, 2, 3]}}))\n"
        "    print('child rows', table.count_rows(), flush=True)\n"
        "    os._exit(0)\n"
        "os.waitpid(pid, 0)\n"
    )
    out = subprocess.run(
        [sys.executable, "-W", "error::RuntimeWarning", "-c", probe],
        cwd=REPO_ROOT, capture_output=True, text=True, check=True, timeout=120,
    )
    assert out.stdout.split() == ["True", "False", "child", "rows", "3"], out
