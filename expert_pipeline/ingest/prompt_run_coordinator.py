"""Dagster's queued run coordinator, checking its queue about twice a second.

A queued run waits for the daemon's next look at the queue. Dagster takes the interval in whole
seconds and its daemon loop sleeps in half-second steps, so a 1 s setting means a run waits 0.5
to 1.5 s before it starts: most of the second between an upload and the expert's bar moving.
This subclass accepts a fraction (`dequeue_interval_seconds: 0.5`), so the wait is 0 to 0.5 s;
everything else (the queue, `concurrency.runs` limits, pools) is Dagster's own. Each look is
one query of the run storage.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Self

from dagster import Field
from dagster._core.run_coordinator.queued_run_coordinator import QueuedRunCoordinator
from dagster._serdes import ConfigurableClassData


class PromptRunCoordinator(QueuedRunCoordinator):
    def __init__(
        self, *, dequeue_interval_seconds: float, inst_data: ConfigurableClassData | None = None
    ) -> None:
        super().__init__(dequeue_interval_seconds=1, inst_data=inst_data)
        self._prompt_interval = dequeue_interval_seconds
        self._launcher_warmed = False

    @property
    # The daemon sleeps on any number; Dagster's own annotation says int.
    def dequeue_interval_seconds(self) -> float:  # type: ignore[override]
        # Read only by the daemon, as it starts the loop that launches queued runs: the moment
        # to have the run launcher ready (a forkserver's imports) before the first upload.
        if not self._launcher_warmed:
            self._launcher_warmed = True
            launcher = self._instance.run_launcher if self.has_instance else None
            if callable(getattr(launcher, "warm_up", None)):
                launcher.warm_up()  # type: ignore[union-attr]
        return self._prompt_interval

    @classmethod
    def config_type(cls) -> dict[str, Field]:
        return {
            "dequeue_interval_seconds": Field(
                float,
                is_required=False,
                default_value=0.5,
                description="Seconds between the daemon's looks at the run queue (fractions allowed).",
            )
        }

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData, config_value: Mapping[str, Any]) -> Self:
        return cls(
            inst_data=inst_data, dequeue_interval_seconds=float(config_value["dequeue_interval_seconds"])
        )
