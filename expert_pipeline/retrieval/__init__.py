"""Finding an expert's passages for a question: the one retrieval the chat and the search API use.

Hybrid by default: the question is embedded and the expert's namespace searched by vector
(meaning), the same namespace is searched by keyword (BM25 over the chunk texts: exact names,
numbers, part codes and words the embedding model does not know, e.g. German), each exact term
of the question (a code or number such as "XR-7731", a "quoted phrase") is searched once more
requiring all its words, and the rankings are merged by reciprocal-rank fusion. `mode="vector"` or `"keyword"` gives one side
alone (for comparison, as bench/retrieval_quality.py does).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from expert_pipeline.core.ports import Embedder, MetadataValue, VectorMatch, VectorStore
from expert_pipeline.retrieval.fusion import RRF_K, best_possible, reciprocal_rank_fusion

__all__ = ["CANDIDATES_PER_SIDE", "Mode", "Passage", "search"]

Mode = Literal["hybrid", "vector", "keyword"]

# Each side contributes this many candidates (at least) to the fusion: deep enough that a
# passage ranked fairly low by one side still gets credit when the other ranks it high.
CANDIDATES_PER_SIDE = 30
# Keyword hits scoring below this share of the best one matched only words that most chunks
# hold ("the part", "XR" of "XR-7731"): ranked, they would lend every such chunk the credit of a
# keyword match and push the one exact match down, so they are left out of the fusion.
KEYWORD_MIN_RELATIVE_SCORE = 0.1
# What a person types to find exactly that: a quoted phrase, or a token holding a digit (part
# codes, article numbers, years, amounts). The word search splits "XR-7731" into "xr" and
# "7731" and ranks a chunk full of other "XR-" codes close to the one holding it; searching the
# term with all its words required gives the exact match a ranking of its own.
_EXACT_TERM = re.compile(r'"([^"]+)"|“([^”]+)”|(\S*\d\S*)')
MAX_EXACT_TERMS = 3


@dataclass(frozen=True)
class Passage:
    """One retrieved chunk (it satisfies the chat's `Passage` protocol)."""

    id: str
    score: float
    """Relevance, 0..1, higher is better. Hybrid: the fused score scaled so that first place in
    every ranking is 1. Vector: the cosine similarity. Keyword: BM25 scaled to the best match."""
    metadata: dict[str, MetadataValue]
    vector_rank: int | None = None
    keyword_rank: int | None = None


def search(
    embedder: Embedder,
    store: VectorStore,
    namespace: str,
    query: str,
    top_k: int = 5,
    mode: Mode = "hybrid",
) -> list[Passage]:
    """The `top_k` passages of `namespace` that best answer `query`, best first."""
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, not {top_k}")
    # NFKC so that a pasted "ﬁ" ligature or full-width digits match the (normalised) text.
    query = unicodedata.normalize("NFKC", query).strip()
    if not query:
        return []
    depth = max(top_k, CANDIDATES_PER_SIDE) if mode == "hybrid" else top_k
    vector_matches: list[VectorMatch] = []
    keyword_matches: list[VectorMatch] = []
    if mode in ("hybrid", "vector"):
        vector_matches = store.query(namespace, embedder.embed([query])[0], top_k=depth)
    if mode in ("hybrid", "keyword"):
        keyword_matches = _informative(store.keyword_query(namespace, query, top_k=depth))
    exact_lists: list[list[VectorMatch]] = []
    if mode == "hybrid":
        exact_lists = [
            store.keyword_query(namespace, term, top_k=depth, all_words=True) for term in exact_terms(query)
        ]

    if mode == "vector":
        return [_passage(m, m.score, vector_rank=rank) for rank, m in enumerate(vector_matches, 1)]
    if mode == "keyword":
        best = keyword_matches[0].score if keyword_matches and keyword_matches[0].score > 0 else 1.0
        return [_passage(m, m.score / best, keyword_rank=rank) for rank, m in enumerate(keyword_matches, 1)]
    return _fuse(vector_matches, keyword_matches, [m for m in exact_lists if m], top_k)


def exact_terms(query: str) -> list[str]:
    """The quoted phrases and digit-bearing tokens of `query`, in order, at most MAX_EXACT_TERMS."""
    found: list[str] = []
    for match in _EXACT_TERM.finditer(query):
        term = next(group for group in match.groups() if group).strip(".,;:!?()[]{}'\"")
        if term and term not in found:
            found.append(term)
    return found[:MAX_EXACT_TERMS]


def _informative(matches: list[VectorMatch]) -> list[VectorMatch]:
    if not matches or matches[0].score <= 0:
        return matches
    floor = KEYWORD_MIN_RELATIVE_SCORE * matches[0].score
    return [m for m in matches if m.score >= floor]


def _fuse(
    vector: Sequence[VectorMatch],
    keyword: Sequence[VectorMatch],
    exact: Sequence[Sequence[VectorMatch]],
    top_k: int,
) -> list[Passage]:
    rankings = [[m.id for m in ranking] for ranking in (vector, keyword, *exact)]
    fused = reciprocal_rank_fusion(rankings, k=RRF_K)
    vector_rank = {m.id: rank for rank, m in enumerate(vector, 1)}
    keyword_rank = {m.id: rank for rank, m in enumerate(keyword, 1)}
    by_id = {m.id: m for ranking in (*exact, keyword, vector) for m in ranking}
    scale = best_possible(len(rankings), k=RRF_K)
    # Equal fused scores: the better vector rank first, then the id (a stable order).
    order = sorted(fused, key=lambda i: (-fused[i], vector_rank.get(i, len(vector) + 1), i))
    return [
        _passage(
            by_id[i],
            round(fused[i] / scale, 6),
            vector_rank=vector_rank.get(i),
            keyword_rank=keyword_rank.get(i),
        )
        for i in order[:top_k]
    ]


def _passage(
    match: VectorMatch, score: float, *, vector_rank: int | None = None, keyword_rank: int | None = None
) -> Passage:
    return Passage(
        id=match.id,
        score=score,
        metadata=dict(match.metadata),
        vector_rank=vector_rank,
        keyword_rank=keyword_rank,
    )
