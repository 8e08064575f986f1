"""SepLLM settings checks, mirroring upstream SepLLM's SepLLMArgumentsChecker (Training-SepLLM/megatron/utils.py).

Upstream asserts; here every rule becomes a problem that names the keys to change. Where
upstream silently resets settings (USE_ORIGINAL_FULL_ATTEN turns SepLLM features off), we
do the same and print a notice.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

from megatron.neox_arguments.findings import Findings
from megatron.neox_arguments.model import ModelArgs
from megatron.neox_arguments.sepllm import SEPARATOR_PRESETS, SepLLMArgs

# Upstream allows at most one of these to be true: each selects a different attention implementation.
EXCLUSIVE_FLAGS = ("USE_ORIGINAL_FULL_ATTEN", "streamingLLM", "USE_SEP_ATTN_KERNEL_ACCELERATOR", "USE_SA_SOFTMAX", "USE_SA_SOFTMAX_NO_DENO")

# SepLLM settings that do nothing under USE_ORIGINAL_FULL_ATTEN (upstream resets them to these values).
_NO_EFFECT_UNDER_FULL = {
    "USE_PREFILL_LOCAL_WIN_SIZES_wrt_LAYERS": False,
    "USE_GENERATE_LOCAL_WIN_SIZES_wrt_LAYERS": False,
    "RECOMPILE_SEP_ATTN_KERNEL": False,
    "BATCH_ADAPTIVE_INIT_POS": False,
    "PRINT_KV_RATIO": False,
    "USE_FIXED_SEP_INTERVALs": False,
}


def validate_sepllm(sep: SepLLMArgs, model: ModelArgs, f: Findings) -> None:
    """Check `sep` against upstream's rules and `model`'s shape; may reset settings as upstream does."""
    num_layers = model.num_layers
    on = [name for name in EXCLUSIVE_FLAGS if getattr(sep, name)]
    if len(on) > 1:
        listed = ", ".join(f.key(name, True) for name in on)
        default_hint = " (USE_SEP_ATTN_KERNEL_ACCELERATOR defaults to true)" if "USE_SEP_ATTN_KERNEL_ACCELERATOR" in on and not f.is_set("USE_SEP_ATTN_KERNEL_ACCELERATOR") else ""
        f.problem(f"at most one of {', '.join(EXCLUSIVE_FLAGS)} may be true, but {listed} are; set all but one to false{default_hint}")
    if not any(f.is_set(field.name) for field in dataclasses.fields(SepLLMArgs)):
        # Upstream's defaults train SepLLM; a GPT-NeoX user running a plain GPT-NeoX config expects full attention.
        f.notice("no SepLLM key is set, so upstream SepLLM's defaults apply: SepLLM attention with a window of "
                 f"{sep.prefill_local_window_size} and the Pythia separators; for plain causal attention add "
                 "configs/sepllm/vanilla.yml (USE_ORIGINAL_FULL_ATTEN: true)")

    _check_ids(sep, "separator_token_ids", f)
    _check_ids(sep, "BiPE_seps", f)
    for name in ("prefill_k", "generate_k"):
        if getattr(sep, name) != 0:
            f.problem(f"{f.key(name, getattr(sep, name))} is a deprecated upstream option and must be 0; to keep whole layers dense, give them a window >= seq_length in prefill_loc_win_size_list")
    if sep.init_tok_max_idx < -1:
        f.problem(f"{f.key('init_tok_max_idx', sep.init_tok_max_idx)} must be >= -1 (-1 keeps no initial tokens, 2 keeps tokens 0..2)")
    for name in ("prefill_local_window_size", "generate_local_window_size"):
        if getattr(sep, name) < 1:
            f.problem(f"{f.key(name, getattr(sep, name))} must be >= 1 (the window counts the query itself)")
    if sep.print_ratio_intervals < 1:
        f.problem(f"{f.key('print_ratio_intervals', sep.print_ratio_intervals)} must be >= 1")
    if sep.Layer_num is not None and num_layers is not None and sep.Layer_num != num_layers:
        f.problem(f"{f.key('Layer_num', sep.Layer_num)} must equal {f.key('num_layers', num_layers)}; change one of them (or remove Layer_num)")
    _check_per_layer(sep, "USE_PREFILL_LOCAL_WIN_SIZES_wrt_LAYERS", "prefill_loc_win_size_list", num_layers, f)
    _check_per_layer(sep, "USE_GENERATE_LOCAL_WIN_SIZES_wrt_LAYERS", "generate_win_loc_size_list", num_layers, f)

    if sep.USE_ORIGINAL_FULL_ATTEN:
        _full_attention(sep, f)
        return
    if sep.RECOMPILE_SEP_ATTN_KERNEL and not sep.USE_SEP_ATTN_KERNEL_ACCELERATOR:
        f.problem(f"{f.key('RECOMPILE_SEP_ATTN_KERNEL', True)} only takes effect with USE_SEP_ATTN_KERNEL_ACCELERATOR: true; set one of them accordingly")
    if sep.USE_SEP_ATTN_KERNEL_ACCELERATOR:
        _kernel_limits(sep, model, f)
    if sep.USE_FIXED_SEP_INTERVALs:
        _check_per_layer(sep, "USE_FIXED_SEP_INTERVALs", "fixed_sep_intervals_list", num_layers, f)
        if sep.streamingLLM:
            f.notice("streamingLLM has no effect while USE_FIXED_SEP_INTERVALs is true (FixLLM keeps every k-th token instead)")
    elif sep.streamingLLM:
        _streaming(sep, f)
    elif not (sep.USE_SA_SOFTMAX or sep.USE_SA_SOFTMAX_NO_DENO):
        ids = sep.separator_token_ids
        if ids is None or ids == [] or ids == [-1]:
            f.problem(f"SepLLM attention needs separators, but {f.key('separator_token_ids', ids)} has none; give token ids or a preset ({', '.join(sorted(SEPARATOR_PRESETS))}), or set streamingLLM: true / USE_ORIGINAL_FULL_ATTEN: true")
    if sep.USE_BiPE:
        _bipe(sep, model, f)


def _kernel_limits(sep: SepLLMArgs, model: ModelArgs, f: Findings) -> None:
    """What the fast Sep-Attention kernel supports (megatron/sepllm/kernel), checked before any GPU work.

    Asked for explicitly, an unsupported shape is an error; left at its default (true), the
    flag is switched off with a notice, so the masked reference path runs.
    """
    head_dim = model.hidden_size // model.num_attention_heads if model.hidden_size and model.num_attention_heads else 0
    reasons = []
    if head_dim > 128:
        reasons.append(f"head dimension {head_dim} (hidden_size / num_attention_heads) exceeds the kernel's 128")
    if model.attention_dropout:
        reasons.append(f"attention_dropout {model.attention_dropout} is not supported by the kernel")
    if not reasons:
        return
    if f.is_set("USE_SEP_ATTN_KERNEL_ACCELERATOR"):
        f.problem(f"USE_SEP_ATTN_KERNEL_ACCELERATOR: true cannot run this model: {'; '.join(reasons)}; "
                  "set USE_SEP_ATTN_KERNEL_ACCELERATOR: false (masked attention) or change the model shape")
    else:
        sep.USE_SEP_ATTN_KERNEL_ACCELERATOR = False
        f.notice(f"USE_SEP_ATTN_KERNEL_ACCELERATOR (default true) switched off: {'; '.join(reasons)}; SepLLM layers use masked attention")


def _check_ids(sep: SepLLMArgs, name: str, f: Findings) -> None:
    ids = getattr(sep, name)
    if isinstance(ids, str) and ids not in SEPARATOR_PRESETS:
        f.problem(f"{f.key(name, ids)} is not a separator preset; use one of {', '.join(sorted(SEPARATOR_PRESETS))} or a list of token ids")
    elif isinstance(ids, list) and any(i < -1 for i in ids):
        f.problem(f"{f.key(name, ids)} holds negative token ids; token ids are >= 0 ([-1] alone disables the list)")


def _check_per_layer(sep: SepLLMArgs, flag: str, list_name: str, num_layers: Optional[int], f: Findings) -> None:
    if not getattr(sep, flag):
        return
    values: Optional[list[int]] = getattr(sep, list_name)
    if values is None:
        f.problem(f"{f.key(flag, True)} needs {list_name}, one value per layer ({num_layers} values); set it or set {flag}: false")
        return
    if num_layers is not None and len(values) != num_layers:
        f.problem(f"{f.key(list_name, values)} has {len(values)} entries but the model has num_layers {num_layers}; give one value per layer")
    if any(v < 1 for v in values):
        f.problem(f"{f.key(list_name, values)} entries must all be >= 1")


def _full_attention(sep: SepLLMArgs, f: Findings) -> None:
    reset = [name for name, off in _NO_EFFECT_UNDER_FULL.items() if getattr(sep, name) != off]
    if sep.USE_BiPE:
        # Upstream turns BiPE off for the full-attention baseline; the model reads this flag, so reset it.
        sep.USE_BiPE = False
        reset.append("USE_BiPE (reset to false)")
    if reset:
        f.notice(f"USE_ORIGINAL_FULL_ATTEN is true (plain causal attention), so these SepLLM settings have no effect: {', '.join(reset)}")


def _streaming(sep: SepLLMArgs, f: Findings) -> None:
    if sep.USE_BiPE:
        f.problem(f"streamingLLM runs without BiPE (as upstream); set USE_BiPE: false or streamingLLM: false ({f.key('USE_BiPE', True)})")
    if sep.init_tok_max_idx < 0:
        f.problem(f"streamingLLM needs initial (sink) tokens: {f.key('init_tok_max_idx', sep.init_tok_max_idx)} must be >= 0")
    for flag in ("USE_PREFILL_LOCAL_WIN_SIZES_wrt_LAYERS", "USE_GENERATE_LOCAL_WIN_SIZES_wrt_LAYERS"):
        if getattr(sep, flag):
            f.problem(f"streamingLLM uses one window for all layers (as upstream); set {flag}: false and use prefill_local_window_size ({f.key(flag, True)})")


def _bipe(sep: SepLLMArgs, model: ModelArgs, f: Findings) -> None:
    seps: Any = sep.BiPE_seps
    if seps is None or seps == [] or seps == [-1]:
        f.problem(f"USE_BiPE needs BiPE_seps (the tokens that end a segment), e.g. the same list as separator_token_ids; {f.key('BiPE_seps', seps)}")
    if model.pos_emb not in ("rotary", "alibi"):
        f.problem(f"USE_BiPE needs pos_emb rotary or alibi for the inter-segment positions, but {f.key('pos_emb', model.pos_emb)}")
    if model.rope_fusion:
        f.problem(f"USE_BiPE cannot be combined with rope_fusion (as upstream); set rope_fusion: false ({f.key('rope_fusion', True)})")
