"""The embedded chat provider: answers made of the documents' own sentences, no language model.

Given a question and the passages retrieved for it (best first), the sentences of those
passages are scored against the question (words in common, weighted by how rare each word is
among the candidates, plus the passage's retrieval similarity), and the best one to three
sentences become the answer, each followed by a citation marker `[n]` that refers to
`sources[n - 1]`. Only cited passages are returned as sources, numbered in the order the
answer first cites them, so every marker resolves and every source is used.

Nothing is invented: every sentence in an answer is quoted from a source. When no sentence
shares a meaningful word with the question, the answer says so and quotes the closest passage.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from expert_pipeline.chat import Passage, Source

MAX_SENTENCES = 3
MAX_ANSWER_CHARS = 700
# A further sentence joins the answer only if it is nearly as relevant as the best one.
RELATIVE_CUTOFF = 0.55
# Weight of the retrieval similarity (cosine, 0..1) next to the lexical score.
RETRIEVAL_WEIGHT = 0.6

NO_MATCHES = "I could not find anything about that in this expert's documents."

_STOPWORDS = frozenset(
    [
        "a",
        "about",
        "above",
        "after",
        "again",
        "against",
        "all",
        "am",
        "an",
        "and",
        "any",
        "are",
        "as",
        "at",
        "be",
        "because",
        "been",
        "before",
        "being",
        "below",
        "between",
        "both",
        "but",
        "by",
        "can",
        "could",
        "did",
        "do",
        "does",
        "doing",
        "down",
        "during",
        "each",
        "few",
        "for",
        "from",
        "further",
        "had",
        "has",
        "have",
        "having",
        "he",
        "her",
        "here",
        "hers",
        "herself",
        "him",
        "himself",
        "his",
        "how",
        "i",
        "if",
        "in",
        "into",
        "is",
        "it",
        "its",
        "itself",
        "just",
        "me",
        "more",
        "most",
        "my",
        "myself",
        "no",
        "nor",
        "not",
        "now",
        "of",
        "off",
        "on",
        "once",
        "only",
        "or",
        "other",
        "our",
        "ours",
        "ourselves",
        "out",
        "over",
        "own",
        "same",
        "she",
        "should",
        "so",
        "some",
        "such",
        "than",
        "that",
        "the",
        "their",
        "theirs",
        "them",
        "themselves",
        "then",
        "there",
        "these",
        "they",
        "this",
        "those",
        "through",
        "to",
        "too",
        "under",
        "until",
        "up",
        "very",
        "was",
        "we",
        "were",
        "what",
        "when",
        "where",
        "which",
        "while",
        "who",
        "whom",
        "why",
        "will",
        "with",
        "would",
        "you",
        "your",
        "yours",
        "yourself",
        "yourselves",
        "tell",
        "know",
        "please",
        "say",
        "said",
        "says",
        "many",
        "much",
        "give",
        "find",
        "show",
        "explain",
        "describe",
        "according",
        "document",
        "documents",
        "file",
        "files",
    ]
)
_WORD = re.compile(r"[^\W_]+(?:[.,'’][^\W_]+)*", re.UNICODE)
_SENTENCE_END = re.compile(r"(?<=[.!?…])[\"'”’)\]]*\s+|\n\s*\n")


@dataclass
class _Sentence:
    text: str
    passage: int
    terms: frozenset[str]
    score: float = 0.0
    lexical: float = 0.0


def _stem(word: str) -> str:
    word = word.replace("’", "'")
    word = word.removesuffix("'s")
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def terms(text: str) -> list[str]:
    """Content words of `text`, lower-cased and lightly stemmed (numbers kept as written)."""
    out = []
    for match in _WORD.finditer(text.lower()):
        word = match.group(0).strip(".,'’")
        if not word or word in _STOPWORDS:
            continue
        if len(word) == 1 and not word.isdigit():
            continue
        out.append(_stem(word))
    return out


def split_sentences(text: str) -> list[str]:
    sentences = []
    for part in _SENTENCE_END.split(text):
        part = " ".join(part.split())
        if len(part) >= 3:
            sentences.append(part)
    return sentences


def _metadata_text(match: Passage) -> str:
    return str(match.metadata.get("text") or "")


def source_of(match: Passage) -> Source:
    page = match.metadata.get("page")
    page_end = match.metadata.get("page_end")
    start = int(page) if isinstance(page, int | float) else None
    end = int(page_end) if isinstance(page_end, int | float) and start is not None else None
    return Source(
        filename=str(match.metadata.get("filename") or "unknown file"),
        page=start,
        text=_metadata_text(match),
        score=round(float(match.score), 4),
        page_end=end if end is not None and start is not None and end > start else None,
    )


def _where(source: Source) -> str:
    if source.page is None:
        return source.filename
    if source.page_end is not None and source.page_end > source.page:
        return f"{source.filename}, pages {source.page}-{source.page_end}"
    return f"{source.filename}, page {source.page}"


def answer(question: str, matches: Sequence[Passage]) -> tuple[str, list[Source]]:
    """The answer to `question` from `matches` (best first), and the sources it cites."""
    matches = [m for m in matches if _metadata_text(m).strip()]
    if not matches:
        return NO_MATCHES, []

    sentences: list[_Sentence] = []
    seen: set[str] = set()
    for index, match in enumerate(matches):
        for text in split_sentences(_metadata_text(match)):
            key = text.lower()
            if key in seen:  # overlapping chunks repeat sentences; keep the better-ranked one
                continue
            seen.add(key)
            sentences.append(_Sentence(text=text, passage=index, terms=frozenset(terms(text))))

    query = set(terms(question))
    count = len(sentences)
    frequency: dict[str, int] = {}
    for sentence in sentences:
        for term in sentence.terms & query:
            frequency[term] = frequency.get(term, 0) + 1
    weights = {t: math.log(1 + count / (1 + frequency.get(t, 0))) for t in query}
    best_possible = sum(weights.values()) or 1.0

    for sentence in sentences:
        matched = sentence.terms & query
        # Share of the question's (rarity-weighted) words this sentence contains, 0..1.
        sentence.lexical = sum(weights[t] for t in matched) / best_possible
        similarity = max(0.0, float(matches[sentence.passage].score))
        sentence.score = sentence.lexical + RETRIEVAL_WEIGHT * similarity if matched else 0.0

    ranked = sorted((s for s in sentences if s.lexical > 0), key=lambda s: s.score, reverse=True)
    if not ranked:
        closest = source_of(matches[0])
        quote = " ".join(split_sentences(closest.text)[:2]) or closest.text[:300]
        text = (
            "I could not find a passage that answers this directly. "
            f"The closest one ({_where(closest)}) says: \u201c{quote}\u201d [1]"
        )
        return text, [closest]

    chosen: list[_Sentence] = []
    length = 0
    for sentence in ranked:
        if len(chosen) == MAX_SENTENCES:
            break
        if chosen and sentence.score < RELATIVE_CUTOFF * chosen[0].score:
            break
        if chosen and length + len(sentence.text) > MAX_ANSWER_CHARS:
            continue
        if any(_redundant(sentence, other) for other in chosen):
            continue
        chosen.append(sentence)
        length += len(sentence.text)

    numbers: dict[int, int] = {}
    sources: list[Source] = []
    parts = []
    for sentence in chosen:
        if sentence.passage not in numbers:
            numbers[sentence.passage] = len(sources) + 1
            sources.append(source_of(matches[sentence.passage]))
        parts.append(f"{sentence.text} [{numbers[sentence.passage]}]")
    return " ".join(parts), sources


def _redundant(a: _Sentence, b: _Sentence) -> bool:
    if not a.terms or not b.terms:
        return False
    return len(a.terms & b.terms) / len(a.terms | b.terms) > 0.7
