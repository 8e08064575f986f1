"""A local `transformers` tokenizer (a model folder, or a .gguf file) for Llama-shaped models."""
from __future__ import annotations

import os
from typing import Optional, Sequence

from megatron.data.tokenizers.base import Tokenizer, require_file


# Files AutoTokenizer loads a tokenizer from (at least one must be in the folder).
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


class HFAutoTokenizer(Tokenizer):
    """`AutoTokenizer.from_pretrained(vocab_file)` without any download.

    `vocab_file` is a folder with tokenizer files (tokenizer.json / tokenizer.model and
    tokenizer_config.json), or a .gguf model file whose embedded tokenizer is used. Documents
    are encoded with the tokenizer's own special-token template (Llama tokenizers put BOS in
    front). EOD is the tokenizer's EOS; pad is its pad token, else EOS.
    """

    name = "HFAutoTokenizer"

    @classmethod
    def of(cls, tokenizer) -> "HFAutoTokenizer":
        """Ours over a transformers tokenizer already loaded (its settings are left as they are)."""
        self = cls.__new__(cls)
        self._tok = tokenizer
        return self

    def __init__(self, vocab_file: str):
        from transformers import AutoTokenizer

        path = require_file(vocab_file, "a tokenizer folder or .gguf file", self.name)
        hint = "give a transformers tokenizer folder or a .gguf file (a single tokenizers JSON file is tokenizer_type HFTokenizer)"
        if os.path.isdir(path) and not any(os.path.isfile(os.path.join(path, n)) for n in _TOKENIZER_FILES):
            # transformers' own message for this case talks about slow-tokenizer conversion.
            raise ValueError(f"{self.name}: cannot load a tokenizer from {path!r}: the folder holds none of "
                             f"{', '.join(_TOKENIZER_FILES)}; {hint}")
        if not os.path.isdir(path) and not path.endswith(".gguf"):
            # transformers would take the file's name for a Hub repository id, or parse it as a model config
            raise ValueError(f"{self.name}: cannot load a tokenizer from the file {path!r}; {hint}")
        try:
            if path.endswith(".gguf"):
                self._tok = AutoTokenizer.from_pretrained(os.path.dirname(os.path.abspath(path)), gguf_file=os.path.basename(path), local_files_only=True)
            else:
                self._tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError, TypeError) as e:  # TypeError: a folder whose config.json is not a model's
            raise ValueError(f"{self.name}: cannot load a tokenizer from {path!r}: {e}") from e
        if self._tok.eos_token_id is None:
            raise ValueError(f"{self.name}: the tokenizer in {path!r} defines no EOS token to use as end of document")
        backend = getattr(self._tok, "backend_tokenizer", None)
        if backend is not None:
            backend.no_truncation()
            backend.no_padding()

    @property
    def vocab_size(self) -> int:
        return len(self._tok)

    @property
    def eod(self) -> int:
        return int(self._tok.eos_token_id)

    @property
    def pad(self) -> int:
        return int(self._tok.pad_token_id) if self._tok.pad_token_id is not None else self.eod

    def tokenize(self, text: str) -> list[int]:
        return self._tok(text)["input_ids"]

    def tokenize_batch(self, texts: Sequence[str]) -> list[Sequence[int]]:
        return self._tok(list(texts))["input_ids"]

    def detokenize(self, token_ids: Sequence[int]) -> str:
        return self._tok.decode([int(t) for t in token_ids], skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def tokenize_plain(self, text: str) -> list[int]:
        return self._tok(text, add_special_tokens=False)["input_ids"]

    def _unknown_id(self) -> Optional[int]:
        return self._tok.unk_token_id

    def set_num_threads(self, num_threads: Optional[int]) -> None:
        # Fast tokenizers batch-encode on the Rust library's process-wide pool.
        if num_threads is not None:
            os.environ["RAYON_NUM_THREADS"] = str(int(num_threads))
