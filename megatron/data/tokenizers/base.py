"""The interface every tokenizer of the framework offers (GPT-NeoX's, plus batch encoding)."""
from __future__ import annotations

import os
from abc import ABC, abstractmethod
from typing import Optional, Sequence


class Tokenizer(ABC):
    """Text <-> token ids, with the end-of-document (`eod`) and padding (`pad`) ids.

    `tokenize` encodes a whole document the way GPT-NeoX does for this tokenizer type (so
    datasets we write match GPT-NeoX's); `tokenize_batch` gives the same ids for many texts at
    once, in parallel where the library can; `single_token_id` answers "which id spells this
    string in running text", which the separator tool needs.
    """

    name: str = "Tokenizer"

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Number of ids the tokenizer can produce (ids lie in [0, vocab_size))."""

    @property
    @abstractmethod
    def eod(self) -> int:
        """End-of-document id, appended after every document by preprocessing."""

    @property
    def pad(self) -> int:
        """Padding id; the EOD id where the tokenizer defines none."""
        return self.eod

    @abstractmethod
    def tokenize(self, text: str) -> list[int]:
        ...

    def tokenize_batch(self, texts: Sequence[str]) -> list[Sequence[int]]:
        return [self.tokenize(t) for t in texts]

    @abstractmethod
    def detokenize(self, token_ids: Sequence[int]) -> str:
        ...

    def single_token_id(self, text: str) -> Optional[int]:
        """The one id that encodes `text` on its own (no special tokens), or None.

        Text outside the vocabulary that encodes to the unknown token is None too: that id
        spells no particular text.
        """
        ids = self.tokenize_plain(text)
        return int(ids[0]) if len(ids) == 1 and ids[0] != self._unknown_id() else None

    def tokenize_plain(self, text: str) -> list[int]:
        """Ids of `text` without the special tokens (a BOS) that `tokenize` may put at a document's start."""
        return self.tokenize(text)

    def _unknown_id(self) -> Optional[int]:
        """The id of the unknown token, if the vocabulary has one."""
        return None

    def set_num_threads(self, num_threads: Optional[int]) -> None:
        """Threads for `tokenize_batch`; None keeps the library's default (all cores)."""

    def __repr__(self) -> str:
        return f"{self.name}(vocab_size={self.vocab_size})"


def require_file(path: Optional[str], what: str, tokenizer_type: str, setting: str = "vocab_file / --vocab-file") -> str:
    if not path:
        raise ValueError(f"{tokenizer_type} needs {what} ({setting})")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{tokenizer_type}: {what} {path!r} does not exist")
    return str(path)
