"""apply_sepllm: turn SepLLM on for a loaded transformers causal LM."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Optional

from megatron.neox_arguments.sepllm import SepLLMArgs
from megatron.sepllm.hf import families
from megatron.sepllm.hf.config import build_sepllm_args
from megatron.sepllm.hf.runtime import ATTN_NAME, BASES, SepLLMRuntime
from megatron.sepllm.mask import SEPLLM, attention_mode, resolve_token_ids
from megatron.sepllm.separators import separator_mismatch


def apply_sepllm(
    model,
    config: Optional[str | Path | SepLLMArgs | dict] = None,
    *,
    tokenizer=None,
    mode: Optional[str] = None,
    fixed_interval: Optional[int] = None,
    base: Optional[str] = None,
    **settings: Any,
) -> SepLLMRuntime:
    """Apply SepLLM settings (upstream YAML path, SepLLMArgs, dict and/or keyword overrides with the
    upstream names) to `model`; returns the runtime (kv_report(), remove()).

    Separator ids: an explicit `separator_token_ids` (keyword or YAML key, list or preset name),
    else the ids the tokenizer gives the separators, else the preset of the model's tokenizer family.
    `base` is the attention that runs under the SepLLM mask: 'sdpa' or 'eager' (default: the
    model's current one).
    """
    family = families.model_family(model)
    layers = families.num_layers(model)
    args, given = build_sepllm_args(config, layers=layers, mode=mode, fixed_interval=fixed_interval, **settings)
    existing = getattr(model, "_sepllm_runtime", None)
    if existing is not None:
        existing.remove()
    current = model.config._attn_implementation
    base = base or (current if current != ATTN_NAME else "sdpa")
    if base not in BASES:
        raise ValueError(f"SepLLM needs the 'sdpa' or 'eager' attention; the model uses {base!r} (load it with attn_implementation='sdpa')")
    separator_ids = _separator_ids(model, family, args, given, tokenizer)
    runtime = SepLLMRuntime(model, args, separator_ids, base).install()
    model._sepllm_runtime = runtime
    return runtime


def remove_sepllm(model) -> None:
    """Restore the model's original attention."""
    runtime = getattr(model, "_sepllm_runtime", None)
    if runtime is not None:
        runtime.remove()
        del model._sepllm_runtime


def _separator_ids(model, family: str, args: SepLLMArgs, given: set[str], tokenizer) -> list[int]:
    vocab = families.vocab_size(model)
    explicit = "separator_token_ids" in given and args.separator_token_ids not in (None, [-1], [])
    if explicit:
        ids = families.check_separator_ids(resolve_token_ids(args.separator_token_ids), vocab)
        # Another tokenizer's ids would make SepLLM keep other tokens, silently.
        mismatch = separator_mismatch(tokenizer, ids) if tokenizer is not None and attention_mode(args) == SEPLLM else None
        if mismatch is not None:
            warnings.warn(mismatch, stacklevel=3)
        return ids
    if tokenizer is not None:
        return families.check_separator_ids(families.separator_ids_from_tokenizer(tokenizer), vocab, "separator ids from the tokenizer")
    preset = families.preset_separator_ids(model)
    if preset is not None:
        return families.check_separator_ids(preset, vocab, "separator preset")
    if attention_mode(args) == SEPLLM:
        raise ValueError(f"cannot tell the separator ids of this {family} model: pass separator_token_ids=[...] or tokenizer=")
    return []
