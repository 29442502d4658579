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
