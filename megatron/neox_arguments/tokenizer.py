"""TokenizerArgs: which tokenizer and its files (group `tokenizer`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from megatron.neox_arguments.field import arg

TOKENIZER_TYPES = ("GPT2BPETokenizer", "HFTokenizer", "HFAutoTokenizer", "SPMTokenizer", "CharLevelTokenizer")


@dataclass
class TokenizerArgs:
    """Tokenizer (group `tokenizer`)."""

    tokenizer_type: str = arg("GPT2BPETokenizer", "Tokenizer: GPT2BPETokenizer, HFTokenizer (tokenizers JSON), HFAutoTokenizer (local transformers folder or .gguf), SPMTokenizer or CharLevelTokenizer.", choices=TOKENIZER_TYPES)
    vocab_file: Optional[str] = arg(None, "Vocabulary file (tokenizer.json for HFTokenizer, vocab.json for GPT2BPETokenizer, .model for SPMTokenizer).")
    merge_file: Optional[str] = arg(None, "BPE merges file (GPT2BPETokenizer only).")
