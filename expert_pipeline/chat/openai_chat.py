"""The production chat provider: an OpenAI-compatible chat model answers from the retrieved
passages only, citing them as [n]; the passages it cites are returned as sources.

The model is told to answer from the numbered passages alone and to say so when they do not
hold the answer, so the answer stays grounded in the expert's documents.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from expert_pipeline.chat import Passage, Source
from expert_pipeline.chat.extractive import NO_MATCHES, source_of

SYSTEM_PROMPT = (
    "You answer questions about a person's documents. Use only the numbered passages given. "
    "Cite every statement with the passage number in square brackets, like [1] or [2][3]. "
    "If the passages do not contain the answer, say that the documents do not say. Be concise."
)
_CITATION = re.compile(r"\[(\d+)\]")


@dataclass
class OpenAIChat:
    api_key: str
    model: str = "gpt-4o-mini"
    base_url: str | None = None
    timeout_seconds: float = 60.0
    max_retries: int = 4
    _client: Any = field(default=None, init=False, repr=False)

    def _openai(self) -> Any:
        if self._client is None:
            import openai  # imported on first use: the SDK is slow to import

            self._client = openai.OpenAI(
                api_key=self.api_key,
                base_url=self.base_url,
                timeout=self.timeout_seconds,
                max_retries=self.max_retries,
            )
        return self._client

    def __call__(self, question: str, matches: Sequence[Passage]) -> tuple[str, list[Source]]:
        passages = [m for m in matches if str(m.metadata.get("text") or "").strip()]
        if not passages:
            return NO_MATCHES, []
        sources = [source_of(m) for m in passages]
        context = "\n\n".join(
            f"[{i}] ({s.filename}{f', page {s.page}' if s.page is not None else ''})\n{s.text}"
            for i, s in enumerate(sources, 1)
        )
        completion = self._openai().chat.completions.create(
            model=self.model,
            messages=[
                {"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": f"Passages:\n\n{context}\n\nQuestion: {question}"},
            ],
            temperature=0,
        )
        text = (completion.choices[0].message.content or "").strip()
        return _renumber(text, sources)


def _renumber(text: str, sources: list[Source]) -> tuple[str, list[Source]]:
    """Keep only the cited sources, numbered in the order the answer first cites them, and drop
    markers that point at no passage; an answer citing nothing keeps all passages as context."""
    order: list[int] = []
    for match in _CITATION.finditer(text):
        n = int(match.group(1))
        if 1 <= n <= len(sources) and n not in order:
            order.append(n)
    if not order:
        return _CITATION.sub("", text).strip(), sources
    new_number = {old: new for new, old in enumerate(order, 1)}
    renumbered = _CITATION.sub(
        lambda m: f"[{new_number[int(m.group(1))]}]" if int(m.group(1)) in new_number else "", text
    )
    return renumbered.strip(), [sources[n - 1] for n in order]
