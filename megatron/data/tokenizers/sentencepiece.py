"""SentencePiece models (.model files), as GPT-NeoX's SPMTokenizer uses them."""
from __future__ import annotations

from typing import Optional, Sequence

from megatron.data.tokenizers.base import Tokenizer, require_file


class SPMTokenizer(Tokenizer):
    """EOD: the piece <|endoftext|> as in GPT-NeoX, else the model's EOS; pad: the model's pad, else EOD."""

    name = "SPMTokenizer"

    def __init__(self, vocab_file: str):
        import sentencepiece as spm

        path = require_file(vocab_file, "a SentencePiece .model file", self.name)
        try:
            self._sp = spm.SentencePieceProcessor(model_file=path)
        except Exception as e:  # OSError or RuntimeError depending on the failure
            raise ValueError(f"{self.name}: cannot load {path!r} as a SentencePiece model: {e}") from e
        eod = self._piece_id("<|endoftext|>")
        self._eod = eod if eod is not None else (self._sp.eos_id() if self._sp.eos_id() >= 0 else None)
        self._pad = self._sp.pad_id() if self._sp.pad_id() >= 0 else None
        self._threads = -1

    def _piece_id(self, piece: str) -> Optional[int]:
        i = self._sp.piece_to_id(piece)
        # piece_to_id answers the unknown id for a piece that is not in the vocabulary.
        return int(i) if self._sp.id_to_piece(i) == piece and not self._sp.is_unknown(i) else None

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    @property
    def eod(self) -> int:
        if self._eod is None:
            raise ValueError(f"{self.name}: the model has neither an <|endoftext|> piece nor an EOS id")
        return self._eod

    @property
    def pad(self) -> int:
        return self._pad if self._pad is not None else self.eod

    def tokenize(self, text: str) -> list[int]:
        return self._sp.encode(text)

    def tokenize_batch(self, texts: Sequence[str]) -> list[Sequence[int]]:
        return self._sp.encode(list(texts), num_threads=self._threads)

    def detokenize(self, token_ids: Sequence[int]) -> str:
        return self._sp.decode([int(t) for t in token_ids])

    def single_token_id(self, text: str) -> Optional[int]:
        # Encoding a lone string would add the dummy-prefix "▁"; look the piece up instead,
        # falling back to the byte piece (<0x0A> for "\n") of byte-fallback models.
        i = self._piece_id(text.replace(" ", "\u2581"))
        if i is None and len(text.encode("utf-8")) == 1:
            i = self._piece_id(f"<0x{text.encode('utf-8')[0]:02X}>")
        return i

    def set_num_threads(self, num_threads: Optional[int]) -> None:
        self._threads = -1 if num_threads is None else int(num_threads)
