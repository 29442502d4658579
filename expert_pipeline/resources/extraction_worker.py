"""The run's bounded text-extraction worker, started with the run's resources.

Starting it there rather than in the text-extraction step lets its interpreter come up (a few
tenths of a second) while the files are fetched, which is most of a 1-page expert's wait. With
EXECUTOR=celery only the step that reads files starts it, on its own host.
"""

from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg
from pydantic import PrivateAttr

from expert_pipeline.text.isolated_extraction import ExtractionLimits, IsolatedExtractor


class ExtractionWorker(dg.ConfigurableResource):
    """Each file's text is extracted in a worker process with these bounds; a file beyond them
    fails alone ("too large or too complex")."""

    timeout_seconds: float = 120.0
    memory_mb: int = 2048

    _extractor: IsolatedExtractor | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._extractor = IsolatedExtractor(ExtractionLimits(self.timeout_seconds, self.memory_mb))
        self._extractor.start()

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._extractor is not None:
            self._extractor.stop()

    @contextmanager
    def reading(self) -> Iterator[IsolatedExtractor]:
        """The started worker, stopped when the step is done with it (later stages need no
        process of ~60 MB idling beside them)."""
        extractor = self._extractor or IsolatedExtractor(
            ExtractionLimits(self.timeout_seconds, self.memory_mb)
        )
        with extractor:
            yield extractor
