"""What SepLLM needs to know about a loaded transformers causal LM, per model family.

Supported families share the rotate-half RoPE layout (full rotary for Llama, Qwen2 and Mistral,
partial for GPT-NeoX), which position shifting relies on. Our own checkpoints convert to the
HF GPT-NeoX / Llama formats, so they are covered too.
"""
from __future__ import annotations

from typing import Optional

import torch

from megatron.neox_arguments.sepllm import SEPARATOR_PRESETS
from megatron.sepllm.cache.rotary import RotarySpec
from megatron.sepllm.separators import SEPARATOR_STRINGS, separator_ids

SUPPORTED_FAMILIES = ("llama", "qwen2", "mistral", "gpt_neox")


def model_family(model) -> str:
    """The model's family (config.model_type); a clear error for families SepLLM does not support."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in SUPPORTED_FAMILIES:
        raise ValueError(
            f"model family {model_type!r} is not supported by SepLLM; supported families (config.model_type): "
            f"{', '.join(SUPPORTED_FAMILIES)}"
        )
    return model_type


def num_layers(model) -> int:
    return int(model.config.num_hidden_layers)


def vocab_size(model) -> int:
    return int(model.get_input_embeddings().weight.shape[0])


def attention_modules(model) -> list[torch.nn.Module]:
    """The self-attention modules, one per layer (they carry `layer_idx`)."""
    mods = [m for m in model.modules() if hasattr(m, "layer_idx") and type(m).__name__.endswith("Attention")]
    if len(mods) != num_layers(model):
        raise ValueError(f"found {len(mods)} attention modules for {num_layers(model)} layers in {type(model).__name__}")
    return mods


def rotary_spec(model) -> RotarySpec:
    """Rotary frequencies exactly as the model computes them (base, partial rotary and RoPE scaling
    all come from the model config through its rotary-embedding module)."""
    rope = getattr(model.config, "rope_parameters", None) or getattr(model.config, "rope_scaling", None) or {}
    if isinstance(rope, dict) and rope.get("rope_type", rope.get("type")) in ("dynamic", "longrope"):
        raise ValueError(f"position shifting needs fixed rotary frequencies; rope_type {rope.get('rope_type')!r} changes them with the length")
    for name, module in model.named_modules():
        inv = getattr(module, "inv_freq", None)
        if isinstance(inv, torch.Tensor) and name.endswith("rotary_emb"):
            return RotarySpec(inv.detach().float().cpu().clone())
    raise ValueError(f"{type(model).__name__} has no rotary embedding module (rotary_emb with inv_freq); position shifting needs RoPE")


def separator_ids_from_tokenizer(tokenizer) -> list[int]:
    """Ids of the separators that the tokenizer encodes as a single token."""
    ids = [i for _, i in separator_ids(tokenizer) if i is not None]
    if not ids:
        raise ValueError(f"tokenizer {type(tokenizer).__name__} encodes none of the separators {SEPARATOR_STRINGS!r} as one token; pass separator_token_ids")
    return ids


def preset_separator_ids(model) -> Optional[list[int]]:
    """Separator ids of a known tokenizer family, recognised from the model (None if unknown)."""
    family = model_family(model)
    vocab = int(model.config.vocab_size)
    if family == "gpt_neox" and 50000 <= vocab <= 50432:
        return list(SEPARATOR_PRESETS["gpt-neox-20b"])
    if family == "llama" and vocab == 128256:
        return list(SEPARATOR_PRESETS["llama3"])
    return None


def check_separator_ids(ids: list[int], vocab: int, setting: str = "separator_token_ids") -> list[int]:
    bad = [i for i in ids if not 0 <= int(i) < vocab]
    if bad:
        raise ValueError(f"{setting} {bad} are outside the model's vocabulary [0, {vocab}); use the ids of this model's tokenizer")
    return [int(i) for i in ids]
