"""The load-time check of a faster encoder backend: its vectors for a few probe texts against the
fp32 forward pass. A backend whose vectors drift (a broken conversion, a CPU quirk) is refused and
the fp32 encoder used instead."""

from __future__ import annotations

import numpy as np

PROBE_TEXTS = (
    "The committee approved the budget for the new railway line after a long debate.",
    "Mitochondria produce most of the chemical energy needed by the cell.",
    "x",
    "Ünïcödé — numbers 12345, symbols %&§ and a URL: https://example.org/a?b=c",
    "A longer passage: " + " ".join(f"word{i}" for i in range(40)),
)
MIN_PROBE_COSINE = 0.99


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.min(np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))))


def refuse_if_drifting(vectors: np.ndarray, expected: np.ndarray) -> None:
    """Raise when `vectors` (of PROBE_TEXTS) are further than MIN_PROBE_COSINE from `expected`."""
    cosine = min_cosine(vectors, expected)
    if not cosine >= MIN_PROBE_COSINE:
        raise RuntimeError(f"its vectors drift from fp32 (min cosine {cosine:.5f} < {MIN_PROBE_COSINE})")
