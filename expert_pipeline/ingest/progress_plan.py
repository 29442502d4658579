"""How each stage's own progress maps onto the overall percentage.

Embedding dominates the wall time of an ingest, so it owns most of the bar; the spans are
fixed so the bar never jumps backwards when a stage starts.
"""

from __future__ import annotations

from expert_pipeline.core.models import Stage

STAGE_SPANS: dict[Stage, tuple[float, float]] = {
    Stage.FILE_PROCESSING: (0.0, 5.0),
    Stage.TEXT_EXTRACTION: (5.0, 20.0),
    Stage.EMBEDDING: (20.0, 90.0),
    Stage.PINECONE_STORAGE: (90.0, 99.0),
}


def overall_percentage(stage: Stage, done: float, total: float) -> float:
    start, end = STAGE_SPANS[stage]
    fraction = 1.0 if total <= 0 else min(max(done / total, 0.0), 1.0)
    return round(start + (end - start) * fraction, 2)


class RateEstimator:
    """A smoothed throughput (units per second) for an honest ETA.

    An exponentially weighted rate over batches follows real slow-downs (a throttled
    provider) without jumping on one slow batch. No estimate is given before a few seconds
    of work, when any figure would be a guess.
    """

    def __init__(self, alpha: float = 0.3, min_seconds: float = 2.0, min_batches: int = 3) -> None:
        self.alpha = alpha
        self.min_seconds = min_seconds
        self.min_batches = min_batches
        self.batches = 0
        self.rate: float | None = None
        self._start: tuple[float, int] | None = None
        self._last: tuple[float, int] | None = None

    def observe(self, now: float, done: int) -> None:
        if self._start is None:
            self._start = self._last = (now, done)
            return
        last_time, last_done = self._last  # type: ignore[misc]
        if now <= last_time or done <= last_done:
            return
        instant = (done - last_done) / (now - last_time)
        self.rate = instant if self.rate is None else self.alpha * instant + (1 - self.alpha) * self.rate
        self._last = (now, done)
        self.batches += 1

    def pause(self, now: float) -> None:
        """Time up to `now` was not spent on this work (chunks found in the cache): the next
        observation measures from here."""
        if self._last is not None:
            self._last = (now, self._last[1])

    def eta(self, remaining: int) -> float | None:
        if self.rate is None or self._start is None or self._last is None:
            return None
        warmed_up = self.batches >= self.min_batches or self._last[0] - self._start[0] >= self.min_seconds
        if not warmed_up or self.rate <= 0:
            return None
        return remaining / self.rate


def ocr_eta(rate: RateEstimator, remaining_pages: int, later_seconds: float | None) -> float | None:
    """Seconds left while OCR reads a scan: its pages at the measured rate, then the later stages.

    `later_seconds` is what embedding and storage took for recent experts (None without history);
    without it the figure is the OCR alone, a lower bound that the embedding stage then corrects.
    """
    ocr = rate.eta(remaining_pages)
    if ocr is None:
        return None
    return ocr + (later_seconds or 0.0)
