"""dagster-celery's executor, made to ride out a broker restart.

The run worker submits each step to the broker and polls the step's result every second; as
shipped, one refused connection during a broker restart ends the run. Here submitting and
polling are retried while the broker is unreachable, for up to `broker_outage_seconds`; beyond
that the run fails saying so. (Steps queued or running survive on a broker that persists its
data, e.g. Redis with `appendonly yes`.)
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from typing import Any

import dagster as dg
from celery.exceptions import DuplicateTaskNameWarning
from dagster._core.execution.retries import RetryMode
from dagster_celery.executor import CELERY_CONFIG, CeleryExecutor, _submit_task

DEFAULT_BROKER_OUTAGE_SECONDS = 300.0
_RETRY_INTERVAL = 1.0
_MAX_RESUBMITS = 3


class BrokerUnreachable(Exception):
    """The Celery broker or result backend stayed unreachable too long."""


class _Patience:
    """When the broker first failed us in the current outage, and how long we wait it out."""

    def __init__(self, seconds: float, where: str) -> None:
        self.seconds = seconds
        self.where = where
        self.since: float | None = None

    def failed(self, exc: Exception) -> None:
        now = time.monotonic()
        self.since = self.since if self.since is not None else now
        if now - self.since > self.seconds:
            raise BrokerUnreachable(
                f"The Celery broker ({self.where}) has been unreachable for {now - self.since:.0f} s: "
                f"{exc.__class__.__name__}: {exc}"
            ) from exc

    def ok(self) -> None:
        self.since = None


class _PatientResult:
    """A step's AsyncResult whose `ready()` reads "not yet" while the backend is unreachable.

    A step whose result could not be stored (the worker lost the broker as it finished) comes
    back as the connection error: the step is submitted again (its stages are idempotent).
    """

    def __init__(self, result: Any, patience: _Patience, resubmit: Callable[[], Any]) -> None:
        self._result = result
        self._patience = patience
        self._resubmit = resubmit
        self.resubmitted = 0

    def ready(self) -> bool:
        try:
            ready = bool(self._result.ready())
            lost = ready and _is_connection_error(self._result.result)
        except Exception as exc:  # noqa: BLE001 - redis, kombu and socket errors alike: retried
            self._patience.failed(exc)
            return False
        self._patience.ok()
        if lost and self.resubmitted < _MAX_RESUBMITS:
            self.resubmitted += 1
            self._result = self._resubmit()
            return False
        return ready

    def get(self) -> Any:
        return self._result.get()

    def revoke(self) -> None:
        self._result.revoke()


class PatientCeleryExecutor(CeleryExecutor):
    def __init__(self, broker_outage_seconds: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.broker_outage_seconds = broker_outage_seconds

    def execute(self, plan_context: Any, execution_plan: Any) -> Any:
        from dagster_celery.core_execution_loop import core_celery_execution_loop

        where = self.broker.split("@")[-1]  # no credentials in messages
        patience = _Patience(self.broker_outage_seconds, where)
        return core_celery_execution_loop(
            plan_context, execution_plan, step_execution_fn=_patient_submit(patience)
        )


def _is_connection_error(value: object) -> bool:
    """A step's result that is the broker's connection error rather than the step's own."""
    if not isinstance(value, Exception):
        return False
    kind = type(value)
    return kind.__module__.split(".")[0] in ("redis", "kombu", "amqp") and any(
        word in kind.__name__ for word in ("Connection", "Operational", "Timeout")
    )


def _patient_submit(patience: _Patience) -> Callable[..., _PatientResult]:
    def publish(*args: Any) -> Any:
        while True:
            try:
                with warnings.catch_warnings():
                    # dagster-celery registers its task anew for every step: the same task each
                    # time, but Celery warns about it once per step, into the operator's console.
                    warnings.simplefilter("ignore", DuplicateTaskNameWarning)
                    result = _submit_task(*args)
            except Exception as exc:  # noqa: BLE001 - publishing failed: the broker is down, retried
                patience.failed(exc)
                time.sleep(_RETRY_INTERVAL)
                continue
            patience.ok()
            return result

    def submit(*args: Any) -> _PatientResult:
        return _PatientResult(publish(*args), patience, lambda: publish(*args))

    return submit


@dg.executor(
    name="celery",
    config_schema={
        **CELERY_CONFIG,
        "broker_outage_seconds": dg.Field(
            float,
            default_value=DEFAULT_BROKER_OUTAGE_SECONDS,
            description="How long a run waits out an unreachable broker before it fails.",
        ),
    },
    requirements=dg.multiple_process_executor_requirements(),
)
def patient_celery_executor(init_context: dg.InitExecutorContext) -> PatientCeleryExecutor:
    config: dict[str, Any] = dict(init_context.executor_config)
    return PatientCeleryExecutor(
        broker_outage_seconds=float(config["broker_outage_seconds"]),
        broker=config.get("broker"),
        backend=config.get("backend"),
        config_source=config.get("config_source"),
        include=config.get("include"),
        retries=RetryMode.from_config(config["retries"]),
    )
