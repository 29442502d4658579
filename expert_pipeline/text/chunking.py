"""Split page text into overlapping chunks that fit the embedding model's token limit.

Pure Python (no Dagster). Chunks are built from whole sentences where possible, falling back
to lines, then words, then slices of a single giant "word" (a URL, a base64 blob), so that
every chunk the model sees is complete: a chunk over the limit would be silently truncated by
the model and its tail would never be searchable.

Pages are consumed lazily and only a page's worth of pieces plus the current chunk is held,
so a 5,000-page document is chunked in constant memory.
"""

from __future__ import annotations

import re
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from expert_pipeline.text.extraction import PageText

TokenCounter = Callable[[str], int]

# A sentence ends at . ! ? or … (maybe followed by a closing quote or bracket) and whitespace.
_SENTENCE_END = re.compile(r"(?:(?<=[.!?…])|(?<=[.!?…][\"'”’)\]]))\s+")
_LINE_BREAK = re.compile(r"\s*\n\s*")
_WORD_GAP = re.compile(r"\s+")
_PARAGRAPH_BREAK = re.compile(r"\n[^\S\n]*\n\s*")
# Upper bound on characters per token when slicing a giant word (tokens average ~4 chars).
_MAX_CHARS_PER_TOKEN = 8


@dataclass(frozen=True)
class Chunk:
    text: str
    filename: str
    page: int  # page where the chunk starts
    index: int  # 0-based index within the file
    token_count: int
    page_end: int | None = None  # page where it ends (None in chunk files written before it existed)


@dataclass(frozen=True)
class _Piece:
    """A sentence (or smaller) with the whitespace that separates it from the piece before."""

    text: str
    separator: str
    page: int
    tokens: int  # its own tokens, without the counter's fixed overhead (special tokens)


def chunk_pages(
    pages: Iterable[PageText],
    filename: str,
    *,
    count_tokens: TokenCounter,
    max_tokens: int = 256,
    overlap_tokens: int = 32,
) -> Iterator[Chunk]:
    """Yield chunks of at most `max_tokens` tokens (as `count_tokens` counts them) in order.

    Consecutive chunks share about `overlap_tokens` tokens of text (whole trailing sentences
    when they fit, else trailing words) so a fact split across a boundary is still found.
    A chunk may span a page break; its `page` is the page its text starts on, `page_end` the
    page it ends on.
    """
    overhead = count_tokens("")  # special tokens such as [CLS] and [SEP], paid once per chunk
    budget = max_tokens - overhead
    if budget <= 0:
        raise ValueError(f"max_tokens={max_tokens} leaves no room next to {overhead} special tokens")
    if not 0 <= overlap_tokens < budget:
        raise ValueError(f"overlap_tokens must be between 0 and {budget - 1}, not {overlap_tokens}")
    builder = _ChunkBuilder(filename, count_tokens, overhead, max_tokens, overlap_tokens)
    for piece in _pieces(pages, count_tokens, overhead, budget):
        yield from builder.add(piece)
    yield from builder.finish()


class _ChunkBuilder:
    """Packs pieces into chunks; token totals are summed per piece and verified once per chunk.

    Summing per-piece counts keeps the work linear in the document length. Tokenizers are not
    perfectly additive (BPE merges across the joining space), so each finished chunk is
    counted once as a whole, and pieces are handed on to the next chunk while it is over.
    """

    def __init__(
        self, filename: str, count_tokens: TokenCounter, overhead: int, max_tokens: int, overlap_tokens: int
    ) -> None:
        self.filename = filename
        self.count_tokens = count_tokens
        self.overhead = overhead
        self.max_tokens = max_tokens
        self.overlap_tokens = overlap_tokens
        self.current: list[_Piece] = []
        self.carried = 0  # pieces at the front of `current` repeated from the previous chunk
        self.tokens = overhead  # estimated count of _join(current), special tokens included
        self.index = 0

    def add(self, piece: _Piece) -> Iterator[Chunk]:
        pending = deque([piece])
        while pending:
            candidate = pending.popleft()
            if self.tokens + candidate.tokens <= self.max_tokens or not self.current:
                self._append(candidate)
            elif len(self.current) == self.carried:
                # Only overlap so far: shorten it. Once it is gone the piece fits, because
                # every piece was measured alone to be within the budget.
                self._drop_first()
                pending.appendleft(candidate)
            else:
                chunk, returned = self._emit()
                yield chunk
                pending.extendleft(reversed([*returned, candidate]))

    def finish(self) -> Iterator[Chunk]:
        while len(self.current) > self.carried:
            chunk, returned = self._emit()
            yield chunk
            for piece in returned:
                yield from self.add(piece)

    def _append(self, piece: _Piece) -> None:
        self.current.append(piece)
        self.tokens += piece.tokens

    def _drop_first(self) -> None:
        self.tokens -= self.current.pop(0).tokens
        self.carried -= 1

    def _emit(self) -> tuple[Chunk, list[_Piece]]:
        """Verify and build the current chunk; return it and the pieces left for the next one."""
        returned: list[_Piece] = []
        text = _join(self.current)
        actual = self.count_tokens(text)
        while actual > self.max_tokens:
            if len(self.current) - self.carried > 1:
                returned.insert(0, self.current.pop())
            elif self.carried:
                self._drop_first()  # keep the new text, sacrifice the repeated text
            else:
                break  # cannot happen: a lone piece is exactly the text it was measured as
            text = _join(self.current)
            actual = self.count_tokens(text)
        chunk = Chunk(
            text=text,
            filename=self.filename,
            page=self.current[0].page,
            index=self.index,
            token_count=actual,
            page_end=self.current[-1].page,
        )
        self.index += 1
        overlap = _trailing(self.current, self.overlap_tokens, self.count_tokens, self.overhead)
        self.current, self.carried = overlap, len(overlap)
        self.tokens = self.overhead + sum(p.tokens for p in overlap)
        return chunk, returned


def _trailing(pieces: list[_Piece], limit: int, count_tokens: TokenCounter, overhead: int) -> list[_Piece]:
    """The last pieces worth at most `limit` tokens; the last piece's final words if none fits."""
    kept: list[_Piece] = []
    total = 0
    for piece in reversed(pieces):
        if total + piece.tokens > limit:
            break
        kept.insert(0, piece)
        total += piece.tokens
    if kept or not pieces or limit <= 0:
        return kept
    last = pieces[-1]
    for word in reversed(_WORD_GAP.split(last.text)):
        tokens = _own_tokens(word, count_tokens, overhead)
        if total + tokens > limit:
            break
        kept.insert(0, _Piece(word, " ", last.page, tokens))
        total += tokens
    return kept


def _join(pieces: list[_Piece]) -> str:
    # The first piece's separator pointed at text that is not in this chunk.
    return "".join(p.separator + p.text if i else p.text for i, p in enumerate(pieces))


def _own_tokens(text: str, count_tokens: TokenCounter, overhead: int) -> int:
    return max(count_tokens(text) - overhead, 1)


def _pieces(
    pages: Iterable[PageText], count_tokens: TokenCounter, overhead: int, budget: int
) -> Iterator[_Piece]:
    """The sentences of every page in order, each split further only if too long for a chunk."""
    for page in pages:
        # A page break mostly falls inside running text; a paragraph break is a blank line.
        separator = "\n"
        for paragraph in _PARAGRAPH_BREAK.split(page.text):
            paragraph = paragraph.strip()
            if not paragraph:
                continue
            for sentence, gap in _split_keeping_gaps(paragraph, _SENTENCE_END, separator):
                for text, sub_gap, tokens in _fit(sentence, count_tokens, overhead, budget, level=0):
                    yield _Piece(text, gap if sub_gap is None else sub_gap, page.page, tokens)
            separator = "\n\n"


def _split_keeping_gaps(text: str, boundary: re.Pattern[str], first_gap: str) -> Iterator[tuple[str, str]]:
    """Parts of `text` between `boundary` matches, each with the (normalised) gap before it."""
    gap = first_gap
    position = 0
    for match in boundary.finditer(text):
        if match.start() > position:
            yield text[position : match.start()], gap
            gap = "\n" if "\n" in match.group() else " "
        position = match.end()
    if position < len(text):
        yield text[position:], gap


# Finer boundaries for a sentence that alone is over the budget: lines, then words.
_FINER = (_LINE_BREAK, _WORD_GAP)


def _fit(
    text: str, count_tokens: TokenCounter, overhead: int, budget: int, level: int, tokens: int | None = None
) -> Iterator[tuple[str, str | None, int]]:
    """(part, gap before it, tokens) with every part within `budget`; the first gap is None.

    Only text that is over the budget is split again, so ordinary sentences are counted once.
    `tokens` is the count of `text` when the caller already knows it.
    """
    if tokens is None:
        tokens = _own_tokens(text, count_tokens, overhead)
    if tokens <= budget:
        yield text, None, tokens
        return
    if level == len(_FINER):
        for i, (part, part_tokens) in enumerate(_hard_split(text, count_tokens, overhead, budget)):
            yield part, None if i == 0 else "", part_tokens
        return
    parts = list(_split_keeping_gaps(text, _FINER[level], ""))
    if len(parts) == 1 and parts[0][0] == text:
        # Nothing to split at this level: go finer without measuring the same text again.
        yield from _fit(text, count_tokens, overhead, budget, level + 1, tokens)
        return
    first = True
    for part, gap in parts:
        for sub, sub_gap, sub_tokens in _fit(part, count_tokens, overhead, budget, level + 1):
            yield sub, (None if first else gap) if sub_gap is None else sub_gap, sub_tokens
            first = False


def _hard_split(
    text: str, count_tokens: TokenCounter, overhead: int, budget: int
) -> Iterator[tuple[str, int]]:
    """Cut one word with no spaces (a URL, a hash, a base64 blob) into slices that fit."""
    while text:
        # Start from a slice a few times the budget in characters, never from the whole rest:
        # counting a megabyte blob again for every slice would be quadratic.
        size = min(len(text), budget * _MAX_CHARS_PER_TOKEN)
        tokens = _own_tokens(text[:size], count_tokens, overhead)
        while size > 1 and tokens > budget:
            # Shrink in proportion to the excess, a little more to converge in few tries.
            size = max(1, min(size - 1, size * budget * 9 // (10 * tokens)))
            tokens = _own_tokens(text[:size], count_tokens, overhead)
        yield text[:size], tokens
        text = text[size:]


class _LockedCounter:
    """A tokenizer call under a lock: the Rust tokenizer fails if used by two threads at once."""

    def __init__(self, tokenizer: object) -> None:
        self._tokenizer = tokenizer
        self._lock = threading.Lock()

    def __call__(self, text: str) -> int:
        with self._lock:
            # Special tokens count towards the model's limit. No truncation, and verbose=False
            # silences "Token indices sequence length is longer than the specified maximum",
            # which is expected here: measuring over-long text is the point.
            encoding = self._tokenizer(  # type: ignore[operator]
                text, add_special_tokens=True, truncation=False, verbose=False
            )
        return len(encoding["input_ids"])


def local_token_counter(model_path: str | Path) -> TokenCounter:
    """Count tokens exactly as the local model at `model_path` does, special tokens included.

    Only the local folder is read (as with HF_HUB_OFFLINE=1): a missing or incomplete model
    fails here instead of quietly trying to download something.
    """
    path = Path(model_path)
    if not path.is_dir():
        raise FileNotFoundError(f"no model folder at {path}")
    from transformers import AutoTokenizer  # heavy import, only when a counter is wanted

    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True, use_fast=True)
    return _LockedCounter(tokenizer)
