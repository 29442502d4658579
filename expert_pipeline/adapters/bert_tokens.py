"""The bundled BERT model's tokenisation and batching, without torch.

Every backend of the local model (torch, OpenVINO) feeds the same token ids, so the vectors differ
only by arithmetic; and a process that runs the model through OpenVINO never imports torch
(about 300 MB and 2 s it would otherwise pay for nothing).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from expert_pipeline.adapters.local_model_files import counter_for, model_files


class BertTokens:
    """Token counting and length-sorted, padded batches of token ids for one model folder."""

    def __init__(self, model_dir: Path) -> None:
        self.model_dir = model_dir
        # Vector size and token limit read as a process without the model reads them.
        facts = model_files(model_dir)
        self.dimensions = facts.dimensions
        self.max_seq_length = facts.max_seq_length
        # Two tokenizers, because truncation is a setting of the tokenizer: counting must see
        # past the limit (the same counter the served embedder uses), encoding must cut at it
        # (keeping [SEP] at the end, as BERT expects).
        self._counting = counter_for(facts.tokenizer_file)
        self._encoding = Tokenizer.from_file(str(facts.tokenizer_file))
        self._encoding.enable_truncation(max_length=self.max_seq_length)
        self._encoding.no_padding()

    def count_tokens(self, text: str) -> int:
        """Tokens including [CLS] and [SEP], as the model would see them before truncation."""
        return len(self._counting.encode_ordinary(text))

    def batches(
        self, texts: Sequence[str], batch_size: int
    ) -> Iterator[tuple[list[int], np.ndarray, np.ndarray]]:
        """(positions in `texts`, token ids, attention mask) per batch, longest texts first, so
        each batch pads to lengths close to its own."""
        encodings = self._encoding.encode_batch(list(texts), add_special_tokens=True)
        order = sorted(range(len(encodings)), key=lambda i: -len(encodings[i].ids))
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            width = len(encodings[batch[0]].ids)
            ids = np.zeros((len(batch), width), dtype=np.int64)
            mask = np.zeros((len(batch), width), dtype=np.bool_)
            for row, index in enumerate(batch):
                tokens = encodings[index].ids
                ids[row, : len(tokens)] = tokens
                mask[row, : len(tokens)] = True
            yield batch, ids, mask
