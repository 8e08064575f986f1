"""Tokenizers backed by the Rust `tokenizers` library: a tokenizer.json, or GPT-2 vocab + merges."""
from __future__ import annotations

import os
from typing import Optional, Sequence

from megatron.data.tokenizers.base import Tokenizer, require_file

# Looked up in this order; GPT-NeoX itself only knows the first of each list.
EOD_TOKENS = ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>")
PAD_TOKENS = ("<|padding|>", "<pad>", "[PAD]")


class _RustTokenizer(Tokenizer):
    """Shared by HFTokenizer and GPT2BPETokenizer: both wrap a `tokenizers.Tokenizer`."""

    def __init__(self, tok, eod_tokens: Sequence[str], pad_tokens: Sequence[str]):
        # A tokenizer.json may carry truncation or padding settings meant for fine-tuning; they
        # would silently cut or pad documents.
        tok.no_truncation()
        tok.no_padding()
        self._tok = tok
        self._eod = _first_id(tok, eod_tokens)
        self._pad = _first_id(tok, pad_tokens)
        self._eod_names = tuple(eod_tokens)

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def eod(self) -> int:
        if self._eod is None:
            raise ValueError(f"{self.name}: the vocabulary has no end-of-document token (looked for {', '.join(self._eod_names)})")
        return self._eod

    @property
    def pad(self) -> int:
        return self._pad if self._pad is not None else self.eod

    def tokenize(self, text: str) -> list[int]:
        return self._tok.encode(text).ids

    def tokenize_batch(self, texts: Sequence[str]) -> list[Sequence[int]]:
        # encode_batch_fast skips the character offsets, which we never use.
        return [e.ids for e in self._tok.encode_batch_fast(list(texts))]

    def detokenize(self, token_ids: Sequence[int]) -> str:
        # Special tokens are kept so that detokenizing a dataset shows its EODs and round-trips.
        return self._tok.decode([int(t) for t in token_ids], skip_special_tokens=False)

    def tokenize_plain(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def _unknown_id(self) -> Optional[int]:
        unk = getattr(self._tok.model, "unk_token", None)
        return self._tok.token_to_id(unk) if unk else None

    def set_num_threads(self, num_threads: Optional[int]) -> None:
        # The library's thread pool is process-wide and reads this when first used.
        if num_threads is not None:
            os.environ["RAYON_NUM_THREADS"] = str(int(num_threads))


def _first_id(tok, names: Sequence[str]) -> Optional[int]:
    for n in names:
        i = tok.token_to_id(n)
        if i is not None:
            return int(i)
    return None


class HFTokenizer(_RustTokenizer):
    """A `tokenizers` JSON file (e.g. GPT-NeoX-20B's): EOD <|endoftext|>, pad <|padding|>."""

    name = "HFTokenizer"

    def __init__(self, vocab_file: str):
        from tokenizers import Tokenizer as RustTokenizer

        path = require_file(vocab_file, "a tokenizer JSON file", self.name)
        try:
            tok = RustTokenizer.from_file(path)
        except Exception as e:  # the library raises bare Exceptions for malformed files
            raise ValueError(f"{self.name}: cannot read {path!r} as a tokenizers JSON file: {e}") from e
        super().__init__(tok, EOD_TOKENS, PAD_TOKENS)


class GPT2BPETokenizer(_RustTokenizer):
    """GPT-2's byte-level BPE from vocab.json + merges.txt; EOD <|endoftext|> as in GPT-2.

    Same ids as GPT-NeoX's pure-Python GPT-2 tokenizer (same byte-level mapping, same
    pre-tokenization regex, same merges), computed by the Rust library.
    """

    name = "GPT2BPETokenizer"

    def __init__(self, vocab_file: str, merge_file: Optional[str]):
        from tokenizers import Tokenizer as RustTokenizer, decoders, models, pre_tokenizers

        vocab = require_file(vocab_file, "a vocab.json file", self.name)
        merges = require_file(merge_file, "a merges.txt file", self.name, setting="merge_file / --merge-file")
        try:
            model = models.BPE.from_file(vocab, merges)
        except Exception as e:
            raise ValueError(f"{self.name}: cannot read {vocab!r} / {merges!r} as GPT-2 vocab and merges: {e}") from e
        tok = RustTokenizer(model)
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        # In GPT-2 the EOD is an ordinary vocabulary entry; registering it as special makes a
        # literal "<|endoftext|>" in text encode to it, as GPT-NeoX's GPT-2 tokenizer does not
        # (there it is split into characters), so it stays an ordinary entry here too.
        super().__init__(tok, ("<|endoftext|>",), ())
