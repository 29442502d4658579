"""Reciprocal-rank fusion: several rankings of the same records become one.

Each ranking adds 1 / (k + rank) to a record's score (rank 1 is the best). Only ranks are used,
so a cosine similarity and a BM25 score, which live on different scales, never have to be
compared; k = 60 is the constant of Cormack, Clarke and Büttcher (SIGIR 2009), which keeps one
ranking's first place from outweighing agreement between rankings.
"""

from __future__ import annotations

from collections.abc import Sequence

RRF_K = 60


def reciprocal_rank_fusion(rankings: Sequence[Sequence[str]], k: int = RRF_K) -> dict[str, float]:
    """Fused score per id, over every id in any ranking (higher is better)."""
    if k < 0:
        raise ValueError(f"k must not be negative, not {k}")
    scores: dict[str, float] = {}
    for ranking in rankings:
        for rank, item in enumerate(dict.fromkeys(ranking), 1):  # a repeated id counts once
            scores[item] = scores.get(item, 0.0) + 1.0 / (k + rank)
    return scores


def best_possible(lists: int, k: int = RRF_K) -> float:
    """The score of a record ranked first in all `lists` rankings (to scale scores to 0..1)."""
    return lists / (k + 1)
