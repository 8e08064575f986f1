"""SepLLM settings validation, mirroring upstream SepLLM's argument checker."""
from __future__ import annotations

import pytest

from megatron.neox_arguments import ConfigError, NeoXArgs

SHAPE = {"num_layers": 4, "hidden_size": 64, "num_attention_heads": 2, "seq_length": 64, "pos_emb": "rotary"}


def load(**settings) -> NeoXArgs:
    return NeoXArgs.from_dict({**SHAPE, **settings}, source="t.yml")


def error(**settings) -> str:
    with pytest.raises(ConfigError) as info:
        load(**settings)
    return str(info.value)


def test_at_most_one_attention_implementation_flag():
    message = error(USE_ORIGINAL_FULL_ATTEN=True)
    assert "at most one of USE_ORIGINAL_FULL_ATTEN, streamingLLM, USE_SEP_ATTN_KERNEL_ACCELERATOR, USE_SA_SOFTMAX, USE_SA_SOFTMAX_NO_DENO" in message
    assert "`USE_ORIGINAL_FULL_ATTEN: true` (set in t.yml)" in message
    assert "`USE_SEP_ATTN_KERNEL_ACCELERATOR: true` (default)" in message
    assert "USE_SEP_ATTN_KERNEL_ACCELERATOR defaults to true" in message
    assert "at most one" in error(streamingLLM=True, USE_SEP_ATTN_KERNEL_ACCELERATOR=True)
    assert "at most one" in error(USE_SA_SOFTMAX=True, USE_SA_SOFTMAX_NO_DENO=True, USE_SEP_ATTN_KERNEL_ACCELERATOR=False)
    assert load(USE_ORIGINAL_FULL_ATTEN=True, USE_SEP_ATTN_KERNEL_ACCELERATOR=False).sepllm.USE_ORIGINAL_FULL_ATTEN


def test_per_layer_windows_need_one_value_per_layer():
    message = error(USE_PREFILL_LOCAL_WIN_SIZES_wrt_LAYERS=True, prefill_loc_win_size_list=[64, 8, 8])
    assert "has 3 entries but the model has num_layers 4" in message
    assert "needs prefill_loc_win_size_list" in error(USE_PREFILL_LOCAL_WIN_SIZES_wrt_LAYERS=True)
    assert "needs generate_win_loc_size_list" in error(USE_GENERATE_LOCAL_WIN_SIZES_wrt_LAYERS=True)
    assert "entries must all be >= 1" in error(USE_PREFILL_LOCAL_WIN_SIZES_wrt_LAYERS=True, prefill_loc_win_size_list=[64, 0, 8, 64])
    args = load(USE_PREFILL_LOCAL_WIN_SIZES_wrt_LAYERS=True, prefill_loc_win_size_list=[64, 8, 8, 64])
    assert args.sepllm.prefill_loc_win_size_list == [64, 8, 8, 64]
    # A list that is not switched on is not checked (training-free configs carry both).
    assert load(prefill_loc_win_size_list=[1, 2]).sepllm.USE_PREFILL_LOCAL_WIN_SIZES_wrt_LAYERS is False


def test_window_and_initial_token_bounds():
    assert "`prefill_local_window_size: 0` (set in t.yml) must be >= 1" in error(prefill_local_window_size=0)
    assert "generate_local_window_size" in error(generate_local_window_size=0)
    assert "`init_tok_max_idx: -2` (set in t.yml) must be >= -1" in error(init_tok_max_idx=-2)
    assert load(init_tok_max_idx=-1).sepllm.init_tok_max_idx == -1


def test_separator_ids_presets_and_disabled_list():
    assert load(separator_token_ids="llama3").sepllm.separator_token_ids == "llama3"
    assert "is not a separator preset; use one of gpt-neox-20b, llama3, pythia" in error(separator_token_ids="gpt5")
    assert "SepLLM attention needs separators" in error(separator_token_ids=[-1])
    # StreamingLLM and full attention run without separators (upstream disables them).
    assert load(separator_token_ids=[-1], streamingLLM=True, USE_SEP_ATTN_KERNEL_ACCELERATOR=False)
    assert load(separator_token_ids=[-1], USE_ORIGINAL_FULL_ATTEN=True, USE_SEP_ATTN_KERNEL_ACCELERATOR=False)


def test_streaming_rules_follow_upstream():
    base = dict(streamingLLM=True, USE_SEP_ATTN_KERNEL_ACCELERATOR=False)
    assert "streamingLLM needs initial (sink) tokens" in error(**base, init_tok_max_idx=-1)
    assert "set USE_BiPE: false or streamingLLM: false" in error(**base, USE_BiPE=True)
    message = error(**base, USE_PREFILL_LOCAL_WIN_SIZES_wrt_LAYERS=True, prefill_loc_win_size_list=[8, 8, 8, 8])
    assert "streamingLLM uses one window for all layers" in message


def test_self_adjust_softmax_variants_are_exclusive():
    assert "at most one" in error(USE_SA_SOFTMAX=True, USE_SA_SOFTMAX_NO_DENO=True, USE_SEP_ATTN_KERNEL_ACCELERATOR=False)
    assert load(USE_SA_SOFTMAX=True, USE_SEP_ATTN_KERNEL_ACCELERATOR=False).sepllm.USE_SA_SOFTMAX


def test_bipe_needs_rotary_or_alibi_and_separators():
    assert load(USE_BiPE=True, pos_emb="alibi").sepllm.USE_BiPE
    assert "USE_BiPE needs pos_emb rotary or alibi" in error(USE_BiPE=True, pos_emb="learned")
    assert "USE_BiPE needs BiPE_seps" in error(USE_BiPE=True, BiPE_seps=[-1])
    assert "cannot be combined with rope_fusion" in error(USE_BiPE=True, rope_fusion=True)


def test_full_attention_turns_sepllm_features_off_with_a_notice(capsys):
    args = load(USE_ORIGINAL_FULL_ATTEN=True, USE_SEP_ATTN_KERNEL_ACCELERATOR=False, USE_BiPE=True, PRINT_KV_RATIO=True)
    assert args.sepllm.USE_BiPE is False  # upstream resets it for the full-attention baseline
    out = capsys.readouterr().out
    assert "USE_ORIGINAL_FULL_ATTEN is true" in out and "PRINT_KV_RATIO" in out and "USE_BiPE (reset to false)" in out


def test_recompile_needs_the_kernel():
    assert "RECOMPILE_SEP_ATTN_KERNEL: true` (set in t.yml) only takes effect with USE_SEP_ATTN_KERNEL_ACCELERATOR: true" in error(
        RECOMPILE_SEP_ATTN_KERNEL=True, USE_SEP_ATTN_KERNEL_ACCELERATOR=False)
    assert load(RECOMPILE_SEP_ATTN_KERNEL=True).sepllm.RECOMPILE_SEP_ATTN_KERNEL


def test_layer_num_must_match_num_layers():
    assert "`Layer_num: 32` (set in t.yml) must equal `num_layers: 4`" in error(Layer_num=32)
    assert load(Layer_num=4).sepllm.Layer_num == 4


def test_fixed_intervals_need_a_per_layer_list():
    base = dict(USE_FIXED_SEP_INTERVALs=True, USE_SEP_ATTN_KERNEL_ACCELERATOR=False)
    assert "needs fixed_sep_intervals_list" in error(**base)
    assert "has 2 entries" in error(**base, fixed_sep_intervals_list=[5, 5])
    assert load(**base, fixed_sep_intervals_list=[5, 5, 5, 5]).sepllm.fixed_sep_intervals_list == [5, 5, 5, 5]


def test_deprecated_k_options_must_stay_zero():
    assert "deprecated upstream option and must be 0" in error(prefill_k=2)


def test_kernel_limits_checked_before_gpu_work():
    wide = {"hidden_size": 512, "num_attention_heads": 2}  # head dimension 256
    assert "head dimension 256" in error(**wide, USE_SEP_ATTN_KERNEL_ACCELERATOR=True)
    assert "attention_dropout 0.1" in error(attention_dropout=0.1, USE_SEP_ATTN_KERNEL_ACCELERATOR=True)
    defaulted = load(**wide)  # the flag's default gives way, with a notice
    assert defaulted.sepllm.USE_SEP_ATTN_KERNEL_ACCELERATOR is False
    assert any("switched off" in n for n in defaulted.notices)
    assert load().sepllm.USE_SEP_ATTN_KERNEL_ACCELERATOR is True
