"""The OpenAI chat provider through the real SDK against the local stand-in."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from expert_pipeline.chat.openai_chat import SYSTEM_PROMPT, OpenAIChat, _renumber
from expert_pipeline.chat import Source
from tests.openai_standin import API_KEY, OpenAIStandin


@dataclass
class Match:
    score: float
    metadata: dict[str, Any] = field(default_factory=dict)


MATCHES = [
    Match(0.9, {"filename": "tides.pdf", "page": 2, "text": "The moon pulls the oceans."}),
    Match(0.7, {"filename": "tides.pdf", "page": 3, "text": "Spring tides follow full moons."}),
]


def test_answer_is_grounded_in_numbered_passages(openai_standin: OpenAIStandin) -> None:
    chat = OpenAIChat(api_key=API_KEY, base_url=openai_standin.url, model="gpt-4o-mini", max_retries=0)
    answer, sources = chat("What pulls the oceans?", MATCHES)
    (request,) = [r for r in openai_standin.requests if r.path == "/v1/chat/completions"]
    messages = request.body["messages"]
    assert messages[0] == {"role": "system", "content": SYSTEM_PROMPT}
    assert "[1] (tides.pdf, page 2)\nThe moon pulls the oceans." in messages[1]["content"]
    assert messages[1]["content"].endswith("Question: What pulls the oceans?")
    # The stand-in echoes the prompt, so both passages are cited, in order.
    assert answer.startswith("Stand-in answer to:")
    assert [s.page for s in sources] == [2, 3]


def test_no_passages_needs_no_model_call(openai_standin: OpenAIStandin) -> None:
    chat = OpenAIChat(api_key=API_KEY, base_url=openai_standin.url)
    answer, sources = chat("Anything?", [])
    assert sources == [] and "could not find" in answer
    assert openai_standin.requests == []


def test_citations_are_renumbered_to_the_sources_returned() -> None:
    sources = [Source(f"f{i}.pdf", i, f"t{i}", 0.5) for i in (1, 2, 3)]
    text, cited = _renumber("Tides come from the moon [3]. Also [1][3], not [9].", sources)
    assert text == "Tides come from the moon [1]. Also [2][1], not ."
    assert [s.filename for s in cited] == ["f3.pdf", "f1.pdf"]
    uncited, kept = _renumber("No citations here.", sources)
    assert uncited == "No citations here." and kept == sources
