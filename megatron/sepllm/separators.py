"""SepLLM's separators as text, and their token ids under a tokenizer.

The ids in a config (`separator_token_ids`) belong to one tokenizer; the default and the presets
are GPT-NeoX-20B's. Under another tokenizer they name other tokens, and SepLLM would keep those
instead of the separators without any error: `separator_mismatch` says so before training.
"""
from __future__ import annotations

from typing import Optional, Sequence

from megatron.data.tokenizers.base import Tokenizer
from megatron.data.tokenizers.hf_auto import HFAutoTokenizer
from megatron.neox_arguments.sepllm import SEPARATOR_PRESETS

SEPARATOR_STRINGS = (".", ",", "?", "!", ";", ":", " ", "\t", "\n")  # the paper's, in SEPARATOR_PRESETS order
# The space-prefixed punctuation and whitespace runs that upstream also tried.
EXTENDED_SEPARATOR_STRINGS = (" .", " ,", " ?", " !", " ;", " :", " \n", "  ", "   ")


def _ours(tokenizer) -> Tokenizer:
    """One of megatron.data.tokenizers; a transformers tokenizer is wrapped (HFAutoTokenizer)."""
    return tokenizer if isinstance(tokenizer, Tokenizer) else HFAutoTokenizer.of(tokenizer)


def separator_ids(tokenizer, extended: bool = False) -> list[tuple[str, Optional[int]]]:
    """(separator string, its single-token id or None) in upstream order, without repeated ids.

    `tokenizer`: one of megatron.data.tokenizers, or a transformers tokenizer.
    """
    tokenizer = _ours(tokenizer)
    out, seen = [], set()
    for s in SEPARATOR_STRINGS + (EXTENDED_SEPARATOR_STRINGS if extended else ()):
        i = tokenizer.single_token_id(s)
        if i is not None and i in seen:
            continue
        seen.add(i)
        out.append((s, i))
    return out


def _spelled(tokenizer, token_id: int) -> str:
    try:
        return repr(tokenizer.detokenize([token_id]))
    except (OverflowError, ValueError, IndexError, KeyError, TypeError):  # an id beyond the vocabulary
        return "(not in the vocabulary)"


def matching_presets(ids: Sequence[int]) -> list[str]:
    return [name for name, preset in SEPARATOR_PRESETS.items() if preset == list(ids)]


def separator_mismatch(tokenizer, ids: Sequence[int], setting: str = "separator_token_ids") -> Optional[str]:
    """A warning when fewer than half of `ids` are separators under `tokenizer`, else None."""
    ids = [int(i) for i in ids if int(i) >= 0]  # -1 entries stand for no token
    if not ids:
        return None
    tokenizer = _ours(tokenizer)
    known = {i for _, i in separator_ids(tokenizer, extended=True) if i is not None}
    if 2 * sum(i in known for i in ids) >= len(ids):
        return None
    decoded = ", ".join(f"{i}={_spelled(tokenizer, i)}" for i in ids[:9])
    own = [i for _, i in separator_ids(tokenizer) if i is not None]
    presets = matching_presets(own)
    suggestion = f"`{setting}: {own}`" + (f" (preset {presets[0]!r})" if presets else "")
    return (f"{setting} are mostly not separators under this tokenizer ({decoded}): the ids belong to another "
            f"tokenizer (the default is GPT-NeoX-20B's), and SepLLM would keep these tokens instead of the separators. "
            f"This tokenizer's separators: {suggestion}; tools/sepllm/get_separator_ids.py prints them.")
