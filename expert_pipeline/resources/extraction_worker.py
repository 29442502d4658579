"""The bounded text-extraction worker of a run's reading step.

Each file's text is extracted in a worker process under these bounds (a deadline and a memory
cap); a file beyond them fails alone ("too large or too complex"). The worker is started when
the reading step begins and stopped when it ends: later stages need no process idling beside
them. (A resource with its own start and stop would start it with the run, but Dagster then
treats it as a context-managed resource everywhere, sensors included.)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import dagster as dg

if TYPE_CHECKING:
    from expert_pipeline.text.isolated_extraction import IsolatedExtractor


class ExtractionWorker(dg.ConfigurableResource):
    """Each file's text is extracted in a worker process with these bounds."""

    timeout_seconds: float = 120.0
    memory_mb: int = 2048

    @contextmanager
    def reading(self) -> Iterator[IsolatedExtractor]:
        """The started worker, stopped when the step is done with it."""
        # Here, not at import: the code server loads this module and never extracts anything.
        from expert_pipeline.text.isolated_extraction import ExtractionLimits, IsolatedExtractor

        with IsolatedExtractor(ExtractionLimits(self.timeout_seconds, self.memory_mb)) as extractor:
            yield extractor
