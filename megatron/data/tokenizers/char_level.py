"""GPT-NeoX's CharLevelTokenizer: one id per UTF-8 byte, vocabulary 512, EOD 0, pad 1."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from megatron.data.tokenizers.base import Tokenizer


class CharLevelTokenizer(Tokenizer):
    """Byte ids 0..255 of the UTF-8 text (the ids GPT-NeoX's version produces).

    Detokenizing decodes the bytes as UTF-8, so any text round-trips (GPT-NeoX maps each id to
    a character instead, which garbles non-ASCII text). Ids of 256 and above, which tokenizing
    never produces, decode to nothing.
    """

    name = "CharLevelTokenizer"

    def __init__(self, vocab_size: int = 512):
        self._vocab_size = vocab_size

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @property
    def eod(self) -> int:
        return 0

    @property
    def pad(self) -> int:
        return 1

    def tokenize(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def tokenize_batch(self, texts: Sequence[str]) -> list[Sequence[int]]:
        return [np.frombuffer(t.encode("utf-8"), dtype=np.uint8) for t in texts]

    def detokenize(self, token_ids: Sequence[int]) -> str:
        return bytes(int(t) for t in token_ids if 0 <= int(t) < 256).decode("utf-8", errors="replace")
