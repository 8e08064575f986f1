"""SepLLMArgs: the SepLLM attention settings, with upstream SepLLM's names, defaults and meaning.

A SepLLM layer lets each query see the initial tokens, every earlier separator token and a
local window of neighbours. Upstream spells these keys in mixed case (`USE_BiPE`,
`PADDING_ID`, ...); we keep the spelling so upstream YAML files load as they are.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from megatron.neox_arguments.field import arg

# The upstream separator lists, usable by name in `separator_token_ids` / `BiPE_seps`.
# Order: '.', ',', '?', '!', ';', ':', ' ', '\t', '\n' (Llama-3 adds its BOS <|begin_of_text|>).
SEPARATOR_PRESETS: dict[str, list[int]] = {
    "pythia": [15, 13, 32, 2, 28, 27, 209, 186, 187],
    "gpt-neox-20b": [15, 13, 32, 2, 28, 27, 209, 186, 187],
    "llama3": [13, 11, 30, 0, 26, 25, 198, 220, 128000],
    "smollm2": [30, 28, 47, 17, 43, 42, 216, 197, 198],
}


@dataclass
class SepLLMArgs:
    """SepLLM attention settings (group `sepllm`)."""

    separator_token_ids: Optional[list[int] | str] = arg([15, 13, 32, 2, 28, 27, 209, 186, 187], "Token ids of separators ('.', ',', '?', '!', ';', ':', ' ', '\\t', '\\n'), or a preset name from SEPARATOR_PRESETS.")
    PADDING_ID: int = arg(0, "Id of the padding token; with BATCH_ADAPTIVE_INIT_POS, leading tokens with this id are skipped when placing the initial tokens.")
    prefill_k: int = arg(0, "Deprecated upstream option; must stay 0.")
    generate_k: int = arg(0, "Deprecated upstream option; must stay 0.")
    prefill_local_window_size: int = arg(256, "Local window n (neighbouring tokens a query sees, itself included) for training and prefill, when USE_PREFILL_LOCAL_WIN_SIZES_wrt_LAYERS is false.")
    generate_local_window_size: int = arg(256, "Local window n for generation, when USE_GENERATE_LOCAL_WIN_SIZES_wrt_LAYERS is false.")
    USE_PREFILL_LOCAL_WIN_SIZES_wrt_LAYERS: bool = arg(False, "Use per-layer training/prefill windows from prefill_loc_win_size_list.")
    USE_GENERATE_LOCAL_WIN_SIZES_wrt_LAYERS: bool = arg(False, "Use per-layer generation windows from generate_win_loc_size_list.")
    prefill_loc_win_size_list: Optional[list[int]] = arg(None, "Per-layer training/prefill windows, one per layer; a window >= seq_length makes that layer full attention.")
    generate_win_loc_size_list: Optional[list[int]] = arg(None, "Per-layer generation windows, one per layer.")
    init_tok_max_idx: int = arg(2, "Index of the last kept initial token (2 keeps tokens 0, 1, 2); -1 keeps none.")
    USE_ORIGINAL_FULL_ATTEN: bool = arg(False, "Plain causal attention everywhere (highest priority; all other SepLLM settings then have no effect).")
    streamingLLM: bool = arg(False, "StreamingLLM attention: initial tokens plus the local window, no separators.")
    USE_SEP_ATTN_KERNEL_ACCELERATOR: bool = arg(True, "Use the fast Sep-Attention path for training and prefill instead of the masked reference path.")
    RECOMPILE_SEP_ATTN_KERNEL: bool = arg(False, "Compile the Sep-Attention kernel for the exact shapes of each run (more compile time, more speed).")
    BATCH_ADAPTIVE_INIT_POS: bool = arg(False, "Place the initial tokens at each row's first non-padding token (for left-padded batches).")
    PRINT_KV_RATIO: bool = arg(False, "Log the kept-KV ratio and attention-map ratio of the SepLLM mask.")
    print_ratio_intervals: int = arg(8000, "Forward passes between two kept-ratio reports (only with PRINT_KV_RATIO).")
    USE_BiPE: bool = arg(False, "Bilevel Positional Encoding (arXiv 2401.16421): positions count segments between BiPE_seps.")
    BiPE_seps: Optional[list[int] | str] = arg([15, 13, 32, 2, 28, 27, 209, 186, 187], "Separator token ids that delimit segments for BiPE, or a preset name.")
    EXCLUDE_DIAGONAL: bool = arg(True, "True: the window of n counts the query itself (keys i-n < j <= i). False: n neighbours besides the query (i-n <= j <= i).")
    USE_SA_SOFTMAX: bool = arg(False, "Self-Adjust Softmax attention (arXiv 2502.18277).")
    USE_SA_SOFTMAX_NO_DENO: bool = arg(False, "Self-Adjust Softmax without the denominator term (arXiv 2502.18277, v2).")
    SA_Numerator_Bias: float = arg(0.0, "Bias added to the numerator of Self-Adjust Softmax.")
    SA_Denominator_Bias: float = arg(1e-10, "Bias added to the denominator of Self-Adjust Softmax.")
    USE_FIXED_SEP_INTERVALs: bool = arg(False, "FixLLM: keep one token every k positions (k from fixed_sep_intervals_list) instead of separators.")
    fixed_sep_intervals_list: Optional[list[int]] = arg(None, "Per-layer FixLLM intervals k (only with USE_FIXED_SEP_INTERVALs).")
    Layer_num: Optional[int] = arg(None, "Number of layers (training-free configs); must equal the model's layer count when given.")
