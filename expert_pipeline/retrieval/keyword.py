"""A small in-memory BM25 index over chunk texts, for stores without full-text search of their
own (Pinecone keeps the chunk text in metadata but ranks by vectors only).

Words are compared the way LanceDB's native full-text index compares them (its "simple"
tokenizer, lower-cased, accents folded, English stop words dropped, plurals stemmed), so the
two stores rank the same chunks alike: "Kühlmittelpumpe" finds "kuhlmittelpumpe", "XR-7731"
finds the part code as "xr" + "7731".
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

# Okapi BM25's usual parameters (Robertson & Zaragoza 2009).
K1 = 1.2
B = 0.75

_TOKEN = re.compile(r"[^\W_]+")
# Lucene's English stop words (what LanceDB's tokenizer removes too).
STOP_WORDS = frozenset(
    ["a", "an", "and", "are", "as", "at", "be", "but", "by", "for", "if", "in", "into", "is", "it"]
    + ["no", "not", "of", "on", "or", "such", "that", "the", "their", "then", "there", "these"]
    + ["they", "this", "to", "was", "will", "with"]
)


def fold(text: str) -> str:
    """NFKC (ligatures such as "ﬁ" become "fi"), lower case, accents removed."""
    decomposed = unicodedata.normalize("NFKD", unicodedata.normalize("NFKC", text).casefold())
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


def _stem(word: str) -> str:
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def tokens(text: str) -> list[str]:
    """The terms of `text` as the index stores them."""
    return [_stem(word) for word in _TOKEN.findall(fold(text)) if word not in STOP_WORDS]


@dataclass
class KeywordIndex:
    """BM25 over a fixed set of documents (id -> text); build a new one when they change."""

    ids: list[str] = field(default_factory=list)
    _terms: list[Counter[str]] = field(default_factory=list)
    _lengths: list[int] = field(default_factory=list)
    _postings: dict[str, list[int]] = field(default_factory=dict)

    @classmethod
    def build(cls, documents: Iterable[tuple[str, str]]) -> KeywordIndex:
        index = cls()
        for doc_id, text in documents:
            counts = Counter(tokens(text))
            position = len(index.ids)
            index.ids.append(doc_id)
            index._terms.append(counts)
            index._lengths.append(sum(counts.values()))
            for term in counts:
                index._postings.setdefault(term, []).append(position)
        return index

    def __len__(self) -> int:
        return len(self.ids)

    def search(self, text: str, top_k: int, all_words: bool = False) -> list[tuple[str, float]]:
        """(id, BM25 score) of the `top_k` best documents sharing a term with `text` (with
        `all_words`: holding every term of it), best first."""
        n = len(self.ids)
        query = set(tokens(text))
        if n == 0 or top_k < 1 or not query:
            return []
        average = sum(self._lengths) / n or 1.0
        scores: dict[int, float] = {}
        if all_words and not all(term in self._postings for term in query):
            return []
        for term in query:
            postings = self._postings.get(term)
            if not postings:
                continue
            idf = math.log(1 + (n - len(postings) + 0.5) / (len(postings) + 0.5))
            for position in postings:
                tf = self._terms[position][term]
                norm = K1 * (1 - B + B * self._lengths[position] / average)
                scores[position] = scores.get(position, 0.0) + idf * tf * (K1 + 1) / (tf + norm)
        if all_words:
            scores = {p: s for p, s in scores.items() if query <= self._terms[p].keys()}
        ranked = sorted(scores.items(), key=lambda item: (-item[1], self.ids[item[0]]))
        return [(self.ids[position], score) for position, score in ranked[:top_k]]


def search_texts(
    documents: Sequence[tuple[str, str]], text: str, top_k: int, all_words: bool = False
) -> list[tuple[str, float]]:
    """One-off BM25 search over `documents` (id, text)."""
    return KeywordIndex.build(documents).search(text, top_k, all_words=all_words)
