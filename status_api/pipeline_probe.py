"""A closer look at a pipeline that stopped beating, from Dagster's own records: is the daemon
alive (its heartbeats in the instance), and if it is, why does the code location not load.
Imports Dagster lazily and only then, so the API still starts fast; answers are cached."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

from sqlalchemy.orm import Session

from expert_pipeline.core.models import utcnow
from expert_pipeline.core.pipeline_health import PipelineState, read_state

REPO_ROOT = Path(__file__).resolve().parent.parent
_CACHE_SECONDS = 30.0
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# What `dagster definitions validate` says between its failure line and the stack trace.
_FAILURE = re.compile(r"Validation failed for code location \S+:\s*(.+?)\s*(?:Stack Trace:|$)", re.DOTALL)
# A daemon heartbeat older than this means the daemon is not running.
_DAEMON_STALE_SECONDS = 60.0


@dataclass(frozen=True)
class Diagnosis:
    daemon_heartbeat_age_seconds: float | None
    code_location_error: str | None
    summary: str | None  # e.g. "the Dagster daemon is not running"


_lock = threading.Lock()
_cached: tuple[float, Diagnosis] | None = None


def diagnose() -> Diagnosis | None:
    """None where there is no Dagster instance to look at (DAGSTER_HOME unset)."""
    global _cached
    home = os.environ.get("DAGSTER_HOME")
    if not home:
        return None
    with _lock:
        if _cached is not None and time.monotonic() - _cached[0] < _CACHE_SECONDS:
            return _cached[1]
        result = _diagnose(home)
        _cached = (time.monotonic(), result)
        return result


def peek() -> Diagnosis | None:
    """The cached diagnosis without waiting (for the hot read paths); a stale or missing one is
    worked out in the background for the next caller."""
    if not os.environ.get("DAGSTER_HOME"):
        return None
    cached = _cached
    stale = cached is None or time.monotonic() - cached[0] >= _CACHE_SECONDS
    if stale and not _lock.locked():
        threading.Thread(target=diagnose, name="pipeline-probe", daemon=True).start()
    return cached[1] if cached is not None else None


def observed_state(session: Session) -> PipelineState:
    """The pipeline's heartbeat, with Dagster's own diagnosis folded in where it is already known
    (never waiting for it): what every presentation of a pending expert reads."""
    state = read_state(session)
    if not state.alive(utcnow()):
        diagnosis = peek()
        if diagnosis is not None and diagnosis.summary:
            state = replace(state, diagnosis=diagnosis.summary)
    return state


def _diagnose(home: str) -> Diagnosis:
    try:
        from dagster import DagsterInstance

        with DagsterInstance.from_config(home) as instance:
            beats = instance.get_daemon_heartbeats()
    except Exception as exc:  # noqa: BLE001 - the instance itself is unreadable: say so
        return Diagnosis(
            None, None, f"Dagster's instance storage cannot be read ({type(exc).__name__}: {exc})"
        )
    newest = max((beat.timestamp for beat in beats.values()), default=None)
    age = None if newest is None else max(0.0, time.time() - newest)
    if age is None or age > _DAEMON_STALE_SECONDS:
        return Diagnosis(age, None, "the Dagster daemon is not running")
    error = code_location_error()
    if error:
        return Diagnosis(age, error, f"the code location failed to load: {error}")
    return Diagnosis(
        age,
        None,
        "the daemon runs and the code location loads, but its sensor is stopped "
        "(turn pending_experts_sensor on in the Dagster UI)",
    )


def code_location_error() -> str | None:
    """Load the code location the way Dagster does (`dagster definitions validate`), in a process
    of its own: importing the module alone builds nothing, since its definitions are lazy."""
    try:
        done = subprocess.run(
            [
                str(Path(sys.executable).parent / "dagster"),
                "definitions",
                "validate",
                "-w",
                str(REPO_ROOT / "workspace.yaml"),
            ],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return "loading it took longer than 120 s"
    if done.returncode == 0:
        return None
    output = _ANSI.sub("", done.stdout + done.stderr)
    found = _FAILURE.search(output)
    if found:
        return " ".join(found.group(1).split())[:500]
    lines = [line for line in output.splitlines() if line.strip()]
    return lines[-1][:500] if lines else f"exit code {done.returncode}"
