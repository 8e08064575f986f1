"""Tokenizers by GPT-NeoX type name: `build_tokenizer(tokenizer_type, vocab_file, merge_file=None)`."""
from __future__ import annotations

from typing import Optional

from megatron.data.tokenizers.base import Tokenizer

TOKENIZER_TYPES = ("HFTokenizer", "HFAutoTokenizer", "SPMTokenizer", "GPT2BPETokenizer", "CharLevelTokenizer")


def build_tokenizer(tokenizer_type: str, vocab_file: Optional[str], merge_file: Optional[str] = None) -> Tokenizer:
    """The tokenizer of `tokenizer_type` (case-insensitive), from local files only.

    HFTokenizer: vocab_file = tokenizers JSON; HFAutoTokenizer: vocab_file = transformers folder
    or .gguf; SPMTokenizer: vocab_file = .model; GPT2BPETokenizer: vocab_file = vocab.json and
    merge_file = merges.txt; CharLevelTokenizer: no files.
    """
    kind = str(tokenizer_type).lower()
    if kind == "hftokenizer":
        from megatron.data.tokenizers.hf_json import HFTokenizer

        return HFTokenizer(vocab_file)
    if kind == "gpt2bpetokenizer":
        from megatron.data.tokenizers.hf_json import GPT2BPETokenizer

        return GPT2BPETokenizer(vocab_file, merge_file)
    if kind == "spmtokenizer":
        from megatron.data.tokenizers.sentencepiece import SPMTokenizer

        return SPMTokenizer(vocab_file)
    if kind == "hfautotokenizer":
        from megatron.data.tokenizers.hf_auto import HFAutoTokenizer

        return HFAutoTokenizer(vocab_file)
    if kind == "charleveltokenizer":
        from megatron.data.tokenizers.char_level import CharLevelTokenizer

        return CharLevelTokenizer()
    raise ValueError(f"unknown tokenizer_type {tokenizer_type!r}; choose one of {', '.join(TOKENIZER_TYPES)}")


__all__ = ["Tokenizer", "TOKENIZER_TYPES", "build_tokenizer"]
