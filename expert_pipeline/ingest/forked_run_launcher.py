"""Dagster run launcher that forks each run from a preloaded process instead of spawning one.

Dagster's default launcher asks the code server, which starts every run in a fresh `spawn`
interpreter importing Dagster and the code location: ~1.5 s and ~220 MB of private memory per
run. Here a multiprocessing forkserver (a fresh interpreter of its own, so none of the
launching process's threads, database connections or gRPC channels come along) imports them
once; each run is a fork of it that starts in tens of milliseconds and shares the imported
modules' pages copy-on-write. The run process does what `dagster api execute_run` does.

Only the process that launches runs (the daemon, with the QueuedRunCoordinator) starts the
forkserver, at its first launch: the webserver also builds this launcher (for its Instance page
and to cancel runs) and must not pay ~200 MB for a forkserver it never uses. Any process can
cancel a run or check its worker: the worker's pid and start time are run tags.

A run sees the environment the forkserver started with (the launching process's at its first
launch; the daemon's never changes), and what the preloaded modules read from it then.
"""

from __future__ import annotations

import contextlib
import gc
import importlib.util
import multiprocessing
import multiprocessing.connection
import multiprocessing.forkserver
import multiprocessing.process
import os
import signal
import sys
import threading
import types
from collections.abc import Mapping, Sequence
from typing import Any, Self

import psutil
from dagster import Array, Field
from dagster import _check as check
from dagster._cli.api import _execute_run_command_body
from dagster._cli.utils import get_instance_for_cli
from dagster._core.events import EngineEventData
from dagster._core.instance import InstanceRef
from dagster._core.launcher.base import (
    CheckRunHealthResult,
    LaunchRunContext,
    RunLauncher,
    WorkerStatus,
)
from dagster._core.storage.dagster_run import DagsterRun, DagsterRunStatus
from dagster._serdes import ConfigurableClass, ConfigurableClassData, deserialize_value, serialize_value
from dagster._utils import get_run_crash_explanation
from dagster._utils.interrupts import capture_interrupts

DEFAULT_PRELOAD = ["dagster", "expert_pipeline.definitions"]
PID_TAG = "expert_pipeline/run_worker_pid"
STARTED_TAG = "expert_pipeline/run_worker_started_at"
# A forked worker's command line is its forkserver's: how a pid is told to be one of ours.
FORKSERVER_CMDLINE = "from multiprocessing.forkserver import main"

_forkserver_lock = threading.Lock()
_preload_set = False


def _run_worker(run_id: str, serialized_instance_ref: str) -> None:
    """The forked run process: `dagster api execute_run` without the new interpreter."""
    # The collector then leaves the preloaded objects alone, so their pages stay shared.
    gc.freeze()
    # The launching program's main script (preloaded as `__main__`) would otherwise be run again
    # by every process this run spawns (the extraction worker): ~1.5 s of imports each.
    sys.modules["__main__"] = types.ModuleType("__main__")
    with capture_interrupts():
        instance_ref = deserialize_value(serialized_instance_ref, InstanceRef)
        with get_instance_for_cli(instance_ref=instance_ref) as instance:
            _execute_run_command_body(run_id, instance, lambda _event: None, set_exit_code_on_failure=False)


def _start_forkserver(preload: Sequence[str]) -> None:
    """Start this process's forkserver, or restart it if it died (its preload is the first
    caller's: one forkserver per process)."""
    global _preload_set
    with _forkserver_lock:
        if not _preload_set:
            # The forkserver skips a module that fails to import; fail here instead, with its name.
            missing = [name for name in preload if not _importable(name)]
            if missing:
                raise ModuleNotFoundError(f"ForkedRunLauncher: preload modules not found: {missing}")
            # `__main__` too: imported once there, so no forked child runs the launching script again.
            multiprocessing.get_context("forkserver").set_forkserver_preload(["__main__", *preload])
            _preload_set = True
        multiprocessing.forkserver.ensure_running()


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


def _worker_process(run: DagsterRun) -> psutil.Process | None:
    """The live forked worker recorded on `run`, or None (gone, or its pid now someone else's)."""
    pid, started = run.tags.get(PID_TAG), run.tags.get(STARTED_TAG)
    if not pid or not started:
        return None
    try:
        proc = psutil.Process(int(pid))
        ours = (
            abs(proc.create_time() - float(started)) < 0.05
            and FORKSERVER_CMDLINE in " ".join(proc.cmdline())
            and proc.status() != psutil.STATUS_ZOMBIE
        )
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return None
    return proc if ours else None


class ForkedRunLauncher(RunLauncher, ConfigurableClass):
    """Launches each run as a fork of a forkserver that has imported `preload_modules`."""

    def __init__(
        self,
        preload_modules: Sequence[str] = tuple(DEFAULT_PRELOAD),
        inst_data: ConfigurableClassData | None = None,
    ) -> None:
        self._inst_data = inst_data
        self._preload = list(preload_modules)
        self._workers: dict[str, multiprocessing.process.BaseProcess] = {}
        self._workers_lock = threading.Lock()
        self._stop = threading.Event()
        self._reaper: threading.Thread | None = None
        super().__init__()

    @property
    def inst_data(self) -> ConfigurableClassData | None:
        return self._inst_data

    def warm_up(self) -> None:
        """Start the forkserver now, in the background, so the first run does not wait for its
        imports (~1.5 s); for the process that will launch runs (see PromptRunCoordinator)."""
        threading.Thread(
            target=_start_forkserver, args=(self._preload,), name="forkserver-warm-up", daemon=True
        ).start()

    @classmethod
    def config_type(cls) -> dict[str, Field]:
        return {
            "preload_modules": Field(
                Array(str),
                is_required=False,
                default_value=DEFAULT_PRELOAD,
                description="Imported once by the forkserver; every run process shares them.",
            )
        }

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData, config_value: Mapping[str, Any]) -> Self:
        return cls(preload_modules=config_value["preload_modules"], inst_data=inst_data)

    def launch_run(self, context: LaunchRunContext) -> None:
        run = context.dagster_run
        check.not_none(run.job_code_origin, "ForkedRunLauncher: the run has no code origin")
        _start_forkserver(self._preload)
        process = multiprocessing.get_context("forkserver").Process(
            target=_run_worker,
            args=(run.run_id, serialize_value(self._instance.get_ref())),
            name=f"dagster-run-{run.run_id}",
        )
        process.start()
        # multiprocessing would join it at this process's exit: a daemon restart must not wait
        # for runs; the reaper thread below collects it instead.
        multiprocessing.process._children.discard(process)  # type: ignore[attr-defined]
        pid = check.not_none(process.pid)
        with self._workers_lock:
            self._workers[run.run_id] = process
        self._ensure_reaper()
        try:
            started = psutil.Process(pid).create_time()
        except psutil.NoSuchProcess:
            started = 0.0  # gone already: the reaper reports it
        self._instance.add_run_tags(run.run_id, {PID_TAG: str(pid), STARTED_TAG: repr(started)})
        self._instance.report_engine_event(
            f"Forked run worker (pid {pid}) from the preloaded forkserver.",
            run,
            EngineEventData.in_process(pid),
            cls=self.__class__,
        )

    def _ensure_reaper(self) -> None:
        with self._workers_lock:
            if self._reaper is None or not self._reaper.is_alive():
                self._reaper = threading.Thread(target=self._reap, name="forked-run-reaper", daemon=True)
                self._reaper.start()

    def _reap(self) -> None:
        """Collect exited workers; fail at once a run whose worker died without finishing it."""
        while not self._stop.is_set():
            with self._workers_lock:
                workers = dict(self._workers)
            if not workers:
                if self._stop.wait(1.0):
                    return
                continue
            multiprocessing.connection.wait([p.sentinel for p in workers.values()], timeout=1.0)
            for run_id, process in workers.items():
                if process.exitcode is None:
                    continue
                with self._workers_lock:
                    del self._workers[run_id]
                exitcode = process.exitcode
                process.close()
                with contextlib.suppress(Exception):  # storage gone at shutdown: monitoring catches up
                    self._report_if_unfinished(run_id, exitcode)

    def _report_if_unfinished(self, run_id: str, exitcode: int) -> None:
        run = self._instance.get_run_by_id(run_id)
        if run is None or run.is_finished:
            return
        message = get_run_crash_explanation(prefix=f"Run execution process for {run_id}", exit_code=exitcode)
        self._instance.report_engine_event(message, run, cls=self.__class__)
        self._instance.report_run_failed(run)

    def terminate(self, run_id: str) -> bool:
        run = self._instance.get_run_by_id(run_id)
        if not run or run.is_finished:
            return False
        self._instance.report_run_canceling(run)
        worker = _worker_process(run)
        if worker is None:
            self._instance.report_engine_event("No run worker to stop: it is gone.", run, cls=self.__class__)
            return False
        # capture_interrupts turns SIGINT into an interruption of the running step.
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker.pid, signal.SIGINT)
            return True
        return False

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        with self._workers_lock:
            process = self._workers.get(run.run_id)
        if process is not None and process.exitcode is not None:
            crash = get_run_crash_explanation(prefix="Run worker", exit_code=process.exitcode)
            return CheckRunHealthResult(WorkerStatus.FAILED, crash)
        pid = run.tags.get(PID_TAG)
        if pid is None:
            return CheckRunHealthResult(WorkerStatus.UNKNOWN, "No forked run worker recorded for this run")
        if _worker_process(run) is not None:
            return CheckRunHealthResult(WorkerStatus.RUNNING, run_worker_id=pid)
        latest = self._instance.get_run_by_id(run.run_id)
        # Gone after a successful run: it simply exited. Gone and the run failed (the launching
        # daemon saw it die first and said so): the worker failed, whoever looks.
        if latest is not None and latest.status == DagsterRunStatus.SUCCESS:
            return CheckRunHealthResult(WorkerStatus.SUCCESS, run_worker_id=pid)
        return CheckRunHealthResult(
            WorkerStatus.FAILED,
            f"Run worker (pid {pid}) is gone and the run did not succeed",
            run_worker_id=pid,
        )

    def get_run_worker_debug_info(
        self, run: DagsterRun, include_container_logs: bool | None = True
    ) -> str | None:
        return f"forked run worker pid {run.tags.get(PID_TAG, 'unknown')}"

    def dispose(self) -> None:
        self._stop.set()
