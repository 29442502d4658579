"""Answering questions from an expert's passages (no Dagster import).

A chat provider turns a question and the passages retrieved for it into an answer with
numbered citations: `answer(question, matches) -> (answer_text, sources)`, where `[n]` in the
text refers to `sources[n - 1]`. The embedded default is `extractive` (no language model); a
hosted provider (e.g. OpenAI chat) can sit beside it with the same signature.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol


class Passage(Protocol):
    """What retrieval hands over: `expert_pipeline.retrieval.Passage` (hybrid search, score 0..1,
    best first), or a vector store's `VectorMatch` (cosine score)."""

    @property
    def score(self) -> float: ...

    @property
    def metadata(self) -> Mapping[str, Any]: ...


@dataclass(frozen=True)
class Source:
    filename: str
    page: int | None
    text: str
    score: float
    page_end: int | None = None  # set when the passage runs onto a later page

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class ChatProvider(Protocol):
    def __call__(self, question: str, matches: Sequence[Passage]) -> tuple[str, list[Source]]: ...
