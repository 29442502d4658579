"""Dagster's queued run coordinator, looking at its queue five times a second.

A queued run waits for the daemon's next look at the queue. Dagster takes the interval in whole
seconds and its daemon loop sleeps in half-second steps, so a 1 s setting means a run waits 0.5
to 1.5 s before it starts: most of the second between an upload and the expert's bar moving.
This subclass accepts a fraction (`dequeue_interval_seconds: 0.2`), and in the daemon it paces
the queue loop itself (Dagster's loop then waits nothing, and each look first waits out the rest
of the interval), so a run waits 0 to 0.2 s; everything else (the queue, `concurrency.runs`
limits, pools) is Dagster's own. Each look is a few queries of the run storage.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from typing import Any, Self

from dagster import Field
from dagster._core.run_coordinator.queued_run_coordinator import QueuedRunCoordinator
from dagster._core.workspace.context import IWorkspaceProcessContext
from dagster._daemon.run_coordinator.queued_run_coordinator_daemon import QueuedRunCoordinatorDaemon
from dagster._serdes import ConfigurableClassData

_dagster_look_at_queue = QueuedRunCoordinatorDaemon.run_iteration


def _paced(interval: float) -> Any:
    """The queue daemon's iteration, first waiting out the rest of `interval` since the last."""

    def look_at_queue(self: QueuedRunCoordinatorDaemon, context: IWorkspaceProcessContext) -> Iterator[Any]:
        due = getattr(self, "_prompt_due", 0.0)
        if (wait := due - time.monotonic()) > 0:
            time.sleep(wait)
        self._prompt_due = time.monotonic() + interval  # type: ignore[attr-defined]
        yield from _dagster_look_at_queue(self, context)

    return look_at_queue


class PromptRunCoordinator(QueuedRunCoordinator):
    def __init__(
        self, *, dequeue_interval_seconds: float, inst_data: ConfigurableClassData | None = None
    ) -> None:
        super().__init__(dequeue_interval_seconds=1, inst_data=inst_data)
        self._prompt_interval = dequeue_interval_seconds
        self._daemon_prepared = False

    @property
    # Dagster's own annotation says int; the daemon's loop takes any number.
    def dequeue_interval_seconds(self) -> float:  # type: ignore[override]
        # Read only by the daemon, as it builds the loop that launches queued runs: the moment to
        # pace that loop here and to have the run launcher ready (a forkserver's imports) before
        # the first upload.
        if not self._daemon_prepared:
            self._daemon_prepared = True
            QueuedRunCoordinatorDaemon.run_iteration = _paced(self._prompt_interval)  # type: ignore[method-assign]
            launcher = self._instance.run_launcher if self.has_instance else None
            if callable(getattr(launcher, "warm_up", None)):
                launcher.warm_up()  # type: ignore[union-attr]
        return 0.0

    @classmethod
    def config_type(cls) -> dict[str, Field]:
        return {
            "dequeue_interval_seconds": Field(
                float,
                is_required=False,
                default_value=0.2,
                description="Seconds between the daemon's looks at the run queue (fractions allowed).",
            )
        }

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData, config_value: Mapping[str, Any]) -> Self:
        return cls(
            inst_data=inst_data, dequeue_interval_seconds=float(config_value["dequeue_interval_seconds"])
        )
