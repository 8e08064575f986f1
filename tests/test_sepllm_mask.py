"""The tensor SepLLM mask equals the brute-force reference, edge cases included."""
import random

import pytest
import torch

from megatron.neox_arguments.sepllm import SepLLMArgs
from megatron.sepllm.mask import (
    build_attention_plan,
    document_ids_from_eod,
    kept_ratios,
    layer_kept_ratios,
)
from megatron.sepllm.reference import reference_keep_mask

SEPS = [3, 5, 7]


def _cfg(**kw):
    base = dict(separator_token_ids=SEPS, USE_SEP_ATTN_KERNEL_ACCELERATOR=False)
    base.update(kw)
    return SepLLMArgs(**base)


def _mode(cfg):
    if cfg.USE_ORIGINAL_FULL_ATTEN:
        return "full"
    if cfg.USE_FIXED_SEP_INTERVALs:
        return "fixllm"
    return "streaming" if cfg.streamingLLM else "sepllm"


def _check(ids, cfg, num_layers=1, doc_ids=None, key_valid=None):
    plan = build_attention_plan(ids, cfg, num_layers, doc_ids=doc_ids, key_valid=key_valid)
    for layer in range(num_layers):
        got = plan.dense_mask(layer)[:, 0]
        window = (cfg.prefill_loc_win_size_list[layer] if cfg.USE_PREFILL_LOCAL_WIN_SIZES_wrt_LAYERS
                  else cfg.prefill_local_window_size)
        want = reference_keep_mask(
            ids.tolist(), mode=_mode(cfg), window=window, init_tok_max_idx=cfg.init_tok_max_idx,
            separator_ids=SEPS,
            fixed_interval=cfg.fixed_sep_intervals_list[layer] if cfg.USE_FIXED_SEP_INTERVALs else None,
            exclude_diagonal=cfg.EXCLUDE_DIAGONAL,
            key_valid=None if key_valid is None else key_valid.tolist(),
            doc_ids=None if doc_ids is None else doc_ids.tolist(),
            adaptive_init_padding_id=cfg.PADDING_ID if cfg.BATCH_ADAPTIVE_INIT_POS and doc_ids is None else None,
        )
        assert got.tolist() == want, f"layer {layer} differs from the reference"
        # Ratios from cumulative sums equal the ratios counted on the dense mask.
        r = kept_ratios(plan, layer)
        dense = got & (torch.ones_like(got).tril().bool())
        causal = torch.ones_like(got).tril().bool()
        if doc_ids is not None:
            causal = causal & (doc_ids[:, :, None] == doc_ids[:, None, :])
        if key_valid is not None:
            causal = causal & key_valid[:, None, :]
            dense = dense & key_valid[:, None, :]
        assert r["attn_map_ratio"] == pytest.approx(float(dense.sum() / causal.sum()), rel=1e-6)
    # All layers at once (layers with the same window and kept keys computed once) give the same.
    assert layer_kept_ratios(plan) == [kept_ratios(plan, layer) for layer in range(num_layers)]


@pytest.mark.parametrize("seed", range(12))
def test_random_ids_match_reference(seed):
    g = torch.Generator().manual_seed(seed)
    rnd = random.Random(seed)
    B, L = rnd.randint(1, 3), rnd.randint(6, 40)
    ids = torch.randint(0, 10, (B, L), generator=g)
    cfg = _cfg(
        # below L - 2, so that every seed has keys outside some query's window (the separator rule);
        # covering windows are test_edge_cases' job
        prefill_local_window_size=rnd.randint(1, L - 3),
        init_tok_max_idx=rnd.randint(-1, 4),
        EXCLUDE_DIAGONAL=rnd.random() < 0.7,
        streamingLLM=rnd.random() < 0.2,
    )
    _check(ids, cfg)
    hidden = torch.ones(L, L).tril().bool() & ~build_attention_plan(ids, cfg, 1).dense_mask(0)[:, 0]
    assert hidden.any(), "this seed's mask is plain causal attention: it tests nothing of the SepLLM rule"


def test_edge_cases():
    ids = torch.tensor([[3, 1, 1, 5, 1, 1, 1, 7, 1, 1], [1, 1, 1, 1, 1, 1, 1, 1, 1, 3]])
    for w in (1, 2, 9, 10, 50):
        for init in (-1, 0, 2):
            _check(ids, _cfg(prefill_local_window_size=w, init_tok_max_idx=init))
    # window covering the whole sequence is full causal attention
    plan = build_attention_plan(ids, _cfg(prefill_local_window_size=10), 1)
    assert plan.windows == [None]
    assert plan.dense_mask(0)[:, 0].tolist() == torch.ones(2, 10, 10).tril().bool().tolist()


def test_window_one_and_no_initial_sees_only_separators_and_itself():
    ids = torch.tensor([[3, 1, 1, 5, 1]])
    m = build_attention_plan(ids, _cfg(prefill_local_window_size=1, init_tok_max_idx=-1), 1).dense_mask(0)[0, 0]
    assert m[4].tolist() == [True, False, False, True, True]


def test_per_layer_windows_fixllm_padding_and_documents():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 10, (3, 20), generator=g)
    _check(ids, _cfg(USE_PREFILL_LOCAL_WIN_SIZES_wrt_LAYERS=True, prefill_loc_win_size_list=[20, 3, 5]), num_layers=3)
    _check(ids, _cfg(USE_FIXED_SEP_INTERVALs=True, fixed_sep_intervals_list=[4, 3], prefill_local_window_size=3), num_layers=2)
    # left padding with adaptive initial positions
    ids_p = ids.clone()
    ids_p[0, :5] = 0
    ids_p[1, :2] = 0
    valid = ids_p != 0
    _check(ids_p, _cfg(BATCH_ADAPTIVE_INIT_POS=True, prefill_local_window_size=4), key_valid=valid)
    # documents separated by EOD (id 9)
    docs = document_ids_from_eod(ids, 9)
    _check(ids, _cfg(prefill_local_window_size=4), doc_ids=docs)


def test_full_mode_is_causal():
    ids = torch.randint(0, 10, (2, 7))
    plan = build_attention_plan(ids, _cfg(USE_ORIGINAL_FULL_ATTEN=True), 2)
    assert plan.is_dense_causal
    assert kept_ratios(plan) == {"attn_map_ratio": 1.0, "kv_ratio": 1.0}
