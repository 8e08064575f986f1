"""SepLLM attention inside the model, against a hand-written forward with brute-force masks.

The reference forward below recomputes a GPT-NeoX model from its state dict with plain tensor
algebra (its own rotary, its own attention with masks from megatron.sepllm.reference), so the model
is checked end to end: the plan is built once, each layer uses its own window, and documents and
padding are respected.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from megatron.model import GPTModel
from megatron.neox_arguments.model import ModelArgs
from megatron.neox_arguments.sepllm import SepLLMArgs
from megatron.sepllm.reference import reference_keep_mask

SEPS = [3, 7]
VOCAB = 48


def _args(**overrides) -> ModelArgs:
    base = dict(num_layers=3, hidden_size=32, num_attention_heads=4, seq_length=64, pos_emb="rotary",
                rotary_pct=0.5, gpt_j_residual=True, no_weight_tying=True, init_method_std=0.1)
    base.update(overrides)
    return ModelArgs(**base)


def _sep(**overrides) -> SepLLMArgs:
    base = dict(separator_token_ids=SEPS, BiPE_seps=SEPS, prefill_local_window_size=4, init_tok_max_idx=1,
                USE_SEP_ATTN_KERNEL_ACCELERATOR=False)
    base.update(overrides)
    return SepLLMArgs(**base)


def _ids(batch: int = 2, length: int = 26, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(8, VOCAB, (batch, length), generator=gen)
    sep_at = torch.rand(batch, length, generator=gen) < 0.2
    return torch.where(sep_at, torch.tensor(SEPS[0]), ids)


def _model(args: ModelArgs, sep: SepLLMArgs, seed: int = 0) -> GPTModel:
    torch.manual_seed(seed)
    model = GPTModel(args, sep, VOCAB).eval()
    with torch.no_grad():  # non-trivial norms and biases
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    return model


def reference_forward(model: GPTModel, ids: torch.Tensor, masks: list[torch.Tensor], alibi: bool = False) -> torch.Tensor:
    """Logits of a GPT-NeoX-shaped (MHA, LayerNorm, GeLU) model; masks[l] is [B, L, L] bool for layer l."""
    a = model.model_args
    sd = model.state_dict()
    B, L = ids.shape
    H, h = a.num_attention_heads, a.hidden_size
    D = h // H
    x = sd["embedding.word_embeddings.weight"][ids]
    pos = torch.arange(L, dtype=torch.float32)
    if a.pos_emb == "rotary":
        R = int(D * a.rotary_pct)
        inv = 1.0 / (a.rotary_emb_base ** (torch.arange(0, R, 2).float() / R))
        ang = torch.cat([pos[:, None] * inv] * 2, dim=-1)
        cos, sin = ang.cos(), ang.sin()

    def rope(t):
        if a.pos_emb != "rotary":
            return t
        r, rest = t[..., :R], t[..., R:]
        rotated = torch.cat([-r[..., R // 2:], r[..., : R // 2]], dim=-1)
        return torch.cat([r * cos + rotated * sin, rest], dim=-1)

    def ln(t, prefix):
        return F.layer_norm(t, (h,), sd[f"{prefix}.weight"], sd[f"{prefix}.bias"], a.layernorm_epsilon)

    def linear(t, prefix):
        return t @ sd[f"{prefix}.weight"].T + sd[f"{prefix}.bias"]

    slopes = torch.tensor([2 ** (-8 * (i + 1) / H) for i in range(H)])
    for layer in range(a.num_layers):
        p = f"layers.{layer}"
        x1 = ln(x, f"{p}.input_layernorm")
        qkv = linear(x1, f"{p}.attention.query_key_value").view(B, L, H, 3, D)
        q, k, v = (qkv[:, :, :, j].transpose(1, 2) for j in range(3))
        scores = rope(q) @ rope(k).transpose(-1, -2) / math.sqrt(D)
        if alibi:
            scores = scores - slopes[:, None, None] * (pos[:, None] - pos[None, :]).clamp(min=0)
        scores = scores.masked_fill(~masks[layer][:, None], float("-inf"))
        out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, L, h)
        attn = linear(out, f"{p}.attention.dense")
        mlp_in = ln(x, f"{p}.post_attention_layernorm") if a.gpt_j_residual else ln(x + attn, f"{p}.post_attention_layernorm")
        mlp = linear(F.gelu(linear(mlp_in, f"{p}.mlp.dense_h_to_4h")), f"{p}.mlp.dense_4h_to_h")
        x = x + attn + mlp
    x = F.layer_norm(x, (h,), sd["final_norm.weight"], sd["final_norm.bias"], a.layernorm_epsilon)
    return x @ sd["output_layer.weight"].T


def _masks(ids, mode, windows, init_tok_max_idx=1, interval=None, doc_ids=None, key_valid=None) -> list[torch.Tensor]:
    out = []
    for w in windows:
        m = reference_keep_mask(
            ids.tolist(), mode=mode, window=w, init_tok_max_idx=init_tok_max_idx, separator_ids=SEPS,
            fixed_interval=interval, doc_ids=None if doc_ids is None else doc_ids.tolist(),
            key_valid=None if key_valid is None else key_valid.tolist(),
        )
        out.append(torch.tensor(m))
    return out


def _check(model, ids, masks, alibi=False, **forward_kwargs):
    with torch.no_grad():
        got = model(ids, **forward_kwargs)
    expected = reference_forward(model, ids, masks, alibi=alibi)
    torch.testing.assert_close(got, expected, rtol=0, atol=2e-5)
    return got


@pytest.mark.parametrize("parallel", [True, False])
def test_sepllm_forward_matches_hand_masked_reference(parallel):
    args = _args(gpt_j_residual=parallel)
    model = _model(args, _sep())
    ids = _ids()
    got = _check(model, ids, _masks(ids, "sepllm", [4, 4, 4]))
    # The mask matters: plain causal attention gives different logits.
    full = reference_forward(model, ids, _masks(ids, "full", [1, 1, 1]))
    assert (got - full).abs().max() > 1e-3


def test_per_layer_windows_and_full_layers():
    ids = _ids(length=20)
    # Layer 0 and 2 have windows covering the sequence: they are full attention layers.
    sep = _sep(USE_PREFILL_LOCAL_WIN_SIZES_wrt_LAYERS=True, prefill_loc_win_size_list=[64, 3, 20])
    model = _model(_args(), sep)
    masks = _masks(ids, "full", [1])[0], _masks(ids, "sepllm", [3])[0], _masks(ids, "full", [1])[0]
    _check(model, ids, list(masks))
    assert [model.context_builder.build(ids).plan.windows[i] for i in range(3)] == [None, 3, None]


def test_streaming_and_fixllm_modes():
    ids = _ids()
    streaming = _model(_args(), _sep(streamingLLM=True))
    _check(streaming, ids, _masks(ids, "streaming", [4, 4, 4]))
    fix = _sep(USE_FIXED_SEP_INTERVALs=True, fixed_sep_intervals_list=[3, 5, 3])
    fixllm = _model(_args(), fix)
    masks = [_masks(ids, "fixllm", [4], interval=k)[0] for k in (3, 5, 3)]
    _check(fixllm, ids, masks)


def test_documents_and_padding_are_respected():
    ids = _ids(length=24)
    doc_ids = torch.tensor([[0] * 10 + [1] * 14, [0] * 24])
    key_valid = torch.ones_like(ids, dtype=torch.bool)
    key_valid[1, 20:] = False
    model = _model(_args(), _sep())
    _check(model, ids, _masks(ids, "sepllm", [4] * 3, doc_ids=doc_ids, key_valid=key_valid),
           doc_ids=doc_ids, key_valid=key_valid)


def test_full_attention_mode_equals_plain_causal_and_sequential_residual():
    ids = _ids()
    model = _model(_args(gpt_j_residual=False), _sep(USE_ORIGINAL_FULL_ATTEN=True))
    _check(model, ids, _masks(ids, "full", [1, 1, 1]))


def test_alibi_with_sepllm_mask():
    ids = _ids()
    model = _model(_args(pos_emb="alibi", num_attention_heads=8, hidden_size=32), _sep())
    _check(model, ids, _masks(ids, "sepllm", [4, 4, 4]), alibi=True)


def test_plan_is_built_once_per_forward_and_blocks_run_standalone(monkeypatch):
    model = _model(_args(), _sep())
    ids = _ids()
    calls = []
    original = model.context_builder.build
    monkeypatch.setattr(model.context_builder, "build", lambda *a, **k: calls.append(1) or original(*a, **k))
    with torch.no_grad():
        full = model(ids)
        assert len(calls) == 1
        # Pipeline-style: every stage gets only hidden states and the per-token tensors.
        model.context_builder.clear()
        hidden = model.embedding(ids, model.context_builder(ids))
        for block in model.layers:
            hidden = block(hidden, ids)
        staged = model.output_layer(model.final_norm(hidden), model.embedding.word_embeddings.weight)
    assert len(calls) == 2  # one more build for the staged run, shared by all its blocks
    torch.testing.assert_close(staged, full, rtol=0, atol=0)
    # A different batch is not served from the cache.
    with torch.no_grad():
        other = model(_ids(seed=1))
    assert len(calls) == 3 and not torch.equal(other, full)


def test_inference_mode_forward_rebuilds_instead_of_trusting_the_cache():
    model = _model(_args(), _sep())
    ids = _ids()
    with torch.no_grad():
        expected = model(ids)
    with torch.inference_mode():
        frozen = ids.clone()
        first = model(frozen)
        frozen[:, 5] = SEPS[1]  # inference tensors have no version counter to reveal this
        second = model(frozen)
    torch.testing.assert_close(first, expected, rtol=0, atol=0)
    changed = _check(model, frozen.clone(), _masks(frozen, "sepllm", [4, 4, 4]))
    torch.testing.assert_close(second, changed, rtol=0, atol=0)
    assert not torch.equal(second, first)


def test_kernel_flag_on_cpu_takes_the_masked_path():
    # The kernel runs on CUDA tensors only; on CPU the flag must leave the masked reference path, not fail.
    ids = _ids()
    plain = _model(_args(), _sep())
    flagged = _model(_args(), _sep(USE_SEP_ATTN_KERNEL_ACCELERATOR=True))
    assert flagged.context_builder(ids).use_kernel is False
    with torch.no_grad():
        torch.testing.assert_close(flagged(ids), plain(ids), rtol=0, atol=0)


def test_training_mode_dropout_and_gradients_flow():
    args = _args(attention_dropout=0.1, hidden_dropout=0.1)
    model = _model(args, _sep())
    ids = _ids()
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(ids), model(ids))
    model.train()
    with torch.no_grad():
        assert not torch.equal(model(ids), model(ids)), "dropout is not active in training mode"
    logits = model(ids)
    F.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), ids[:, 1:].reshape(-1)).backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert all(g.abs().sum() > 0 for n, g in grads.items() if "weight" in n)
