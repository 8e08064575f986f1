"""Self-Adjust Softmax, BiPE and ALiBi."""
from __future__ import annotations

import pytest
import torch

from megatron.model import GPTModel
from megatron.model.alibi import alibi_bias, alibi_slopes
from megatron.model.bipe import bilevel_position_ids
from megatron.model.explicit_attention import SA_SOFTMAX, SA_SOFTMAX_NO_DENO, explicit_attention
from megatron.model.rotary import rotary_cos_sin
from megatron.neox_arguments.model import ModelArgs
from megatron.neox_arguments.sepllm import SepLLMArgs
from megatron.sepllm.mask import dense_keep_mask

SEP = 3
VOCAB = 40


def _args(**overrides) -> ModelArgs:
    base = dict(num_layers=2, hidden_size=32, num_attention_heads=4, seq_length=32, pos_emb="rotary",
                rotary_pct=0.5, gpt_j_residual=True, no_weight_tying=True, init_method_std=0.1)
    base.update(overrides)
    return ModelArgs(**base)


def _sep(**overrides) -> SepLLMArgs:
    base = dict(separator_token_ids=[SEP], BiPE_seps=[SEP], prefill_local_window_size=4, init_tok_max_idx=0,
                USE_SEP_ATTN_KERNEL_ACCELERATOR=False)
    base.update(overrides)
    return SepLLMArgs(**base)


def _ids(length=20, seed=0, with_seps=True) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, VOCAB, (2, length), generator=gen)
    if with_seps:
        ids[:, 3::5] = SEP
    return ids


# ---- Self-Adjust Softmax -----------------------------------------------------------------


def _sa_by_hand(scores, visible, variant, num_bias, den_bias):
    """Upstream's formula, one query row at a time."""
    B, H, L, _ = scores.shape
    out = torch.zeros_like(scores)
    for b in range(B):
        for h in range(H):
            for i in range(L):
                s = scores[b, h, i]
                keep = visible[b, 0, i]
                p = torch.softmax(s.masked_fill(~keep, float("-inf")), -1)
                if variant == SA_SOFTMAX_NO_DENO:
                    p = p * s
                else:
                    row = torch.cat([s[: i + 1], torch.zeros(L - i - 1)])  # tril: later keys count as 0
                    lo = min(float(row.min()), 0.0)
                    hi = max(float(row.max()) + den_bias, 0.0) + den_bias
                    p = p * (s - lo + num_bias) / (hi - lo)
                p[i + 1 :] = 0
                out[b, h, i] = p
    return out


@pytest.mark.parametrize("variant", [SA_SOFTMAX, SA_SOFTMAX_NO_DENO])
def test_self_adjust_softmax_follows_the_formula(variant):
    gen = torch.Generator().manual_seed(0)
    B, H, Hkv, L, D = 2, 4, 2, 9, 8
    q, k, v = (torch.randn(B, n, L, D, generator=gen) for n in (H, Hkv, Hkv))
    kept = torch.zeros(B, L, dtype=torch.bool)
    kept[:, [0, 4]] = True
    mask = dense_keep_mask(kept, 3, length=L, batch=B)[:, None]
    got = explicit_attention(q, k, v, mask, sa_variant=variant, numerator_bias=0.25, denominator_bias=1e-3)
    kr, vr = k.repeat_interleave(2, 1), v.repeat_interleave(2, 1)
    scores = q @ kr.transpose(-1, -2) / D**0.5
    probs = _sa_by_hand(scores, mask, variant, 0.25, 1e-3)
    torch.testing.assert_close(got, probs @ vr, rtol=1e-5, atol=1e-6)
    plain = explicit_attention(q, k, v, mask)
    assert (got - plain).abs().max() > 1e-2


def test_self_adjust_softmax_in_the_model_and_off_under_full_attention():
    ids = _ids()
    torch.manual_seed(0)
    base = GPTModel(_args(), _sep(), VOCAB).eval()
    sa = GPTModel(_args(), _sep(USE_SA_SOFTMAX=True, SA_Numerator_Bias=0.1), VOCAB).eval()
    sa.load_state_dict(base.state_dict())
    with torch.no_grad():
        assert (sa(ids) - base(ids)).abs().max() > 1e-4
    full = GPTModel(_args(), _sep(USE_ORIGINAL_FULL_ATTEN=True), VOCAB).eval()
    full_sa = GPTModel(_args(), _sep(USE_ORIGINAL_FULL_ATTEN=True, USE_SA_SOFTMAX=True), VOCAB).eval()
    full.load_state_dict(base.state_dict())
    full_sa.load_state_dict(base.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(full_sa(ids), full(ids), rtol=0, atol=1e-6)


def test_both_self_adjust_variants_at_once_is_an_error():
    with pytest.raises(ValueError, match="at most one"):
        GPTModel(_args(), _sep(USE_SA_SOFTMAX=True, USE_SA_SOFTMAX_NO_DENO=True), VOCAB)


# ---- BiPE --------------------------------------------------------------------------------


def test_bilevel_position_ids_by_hand():
    S = SEP
    ids = torch.tensor([[10, S, 11, 12, S, S, 13], [S, 10, 11, 12, 13, 14, S]])
    intra, inter = bilevel_position_ids(ids, [S])
    assert inter.tolist() == [[0, 0, 1, 1, 1, 2, 3], [0, 1, 1, 1, 1, 1, 1]]
    assert intra.tolist() == [[0, 1, 0, 1, 2, 0, 0], [0, 0, 1, 2, 3, 4, 5]]


def test_bilevel_position_ids_match_a_loop():
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 6, (3, 50), generator=gen)
    seps = [1, 4]
    intra, inter = bilevel_position_ids(ids, seps)
    for b in range(3):
        segment, offset = 0, 0
        for t in range(50):
            assert (int(intra[b, t]), int(inter[b, t])) == (offset, segment)
            offset += 1
            if int(ids[b, t]) in seps:
                segment, offset = segment + 1, 0


def test_bilevel_positions_restart_with_each_document():
    # reset_position_ids: token positions restart after each end of document, and BiPE's two counts with them
    from megatron.data.batch import get_batch

    ids = torch.randint(10, 20, (2, 40), generator=torch.Generator().manual_seed(1))
    ids[:, ::3] = SEP
    ids[0, 17] = ids[1, 5] = ids[1, 30] = 0  # end-of-document tokens
    batch = get_batch(torch.cat([ids, ids[:, :1]], 1), eod_id=0, reset_position_ids=True, reset_attention_mask=True,
                      eod_mask_loss=False)
    model = GPTModel(_args(), _sep(USE_BiPE=True), VOCAB)
    ctx = model.context_builder.build(batch["input_ids"], position_ids=batch["position_ids"], doc_ids=batch["doc_ids"])
    for b in range(2):
        starts = [0] + [t + 1 for t in range(39) if int(ids[b, t]) == 0]
        for s, e in zip(starts, starts[1:] + [40]):
            intra, inter = bilevel_position_ids(ids[b:b + 1, s:e], [SEP])  # each document on its own
            assert torch.equal(ctx.position_ids[b, s:e], intra[0])
            cos = rotary_cos_sin(inter, model.dims.rotary_dims, 10000)[0]  # [1, 1, e - s, rotary dims]
            torch.testing.assert_close(ctx.rope[0][b:b + 1, :, s:e], cos, rtol=0, atol=0)
    # without reset the counts run across the row, as before
    plain = model.context_builder.build(ids)
    assert torch.equal(plain.position_ids, bilevel_position_ids(ids, [SEP])[0])


@pytest.mark.parametrize("pos_emb", ["rotary", "alibi"])
def test_bipe_without_separators_is_a_learned_absolute_position_model(pos_emb):
    # No separator: one segment, so rotary rotates nothing and ALiBi penalises nothing; only the
    # intra-segment table (= token index) remains, which is exactly a learned position embedding.
    ids = _ids(with_seps=False)
    torch.manual_seed(0)
    bipe = GPTModel(_args(pos_emb=pos_emb), _sep(USE_BiPE=True, USE_ORIGINAL_FULL_ATTEN=True), VOCAB).eval()
    learned = GPTModel(_args(pos_emb="learned"), _sep(USE_ORIGINAL_FULL_ATTEN=True), VOCAB).eval()
    learned.load_state_dict(bipe.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(bipe(ids), learned(ids), rtol=0, atol=1e-5)


def test_bipe_rotary_uses_segment_index_and_intra_table():
    ids = _ids()
    intra, inter = bilevel_position_ids(ids, [SEP])
    torch.manual_seed(0)
    bipe = GPTModel(_args(), _sep(USE_BiPE=True), VOCAB).eval()
    ctx = bipe.context_builder.build(ids)
    assert torch.equal(ctx.position_ids, intra)
    for got, want in zip(ctx.rope, rotary_cos_sin(inter, bipe.dims.rotary_dims, 10000)):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    # The same blocks fed token embeddings + table[intra] and rotated by segment index.
    plain = GPTModel(_args(), _sep(), VOCAB).eval()
    plain.load_state_dict({k: v for k, v in bipe.state_dict().items() if "position_embeddings" not in k})
    with torch.no_grad():
        hidden = bipe.embedding.word_embeddings(ids) + bipe.embedding.position_embeddings(intra)
        plain_ctx = plain.context_builder.build(ids, position_ids=inter)
        hidden = plain.run_layers(hidden, ids, inter, ctx=plain_ctx)
        expected = plain.output_layer(plain.final_norm(hidden))
        torch.testing.assert_close(bipe(ids), expected, rtol=0, atol=1e-6)


def test_bipe_needs_rotary_or_alibi():
    with pytest.raises(ValueError, match="USE_BiPE needs pos_emb"):
        GPTModel(_args(pos_emb="learned"), _sep(USE_BiPE=True), VOCAB)


# ---- absolute position embeddings -------------------------------------------------------


def test_sinusoidal_embedding_is_gpt_neox_layout():
    model = GPTModel(_args(pos_emb="sinusoidal"), _sep(), VOCAB).eval()
    ids = _ids(length=6)
    pos = torch.arange(6, dtype=torch.float32)[:, None]
    inv = 1.0 / 10000 ** (torch.arange(0, 32, 2).float() / 32)
    table = torch.cat([(pos * inv).sin(), (pos * inv).cos()], dim=-1)
    with torch.no_grad():
        got = model.embedding(ids, model.context_builder.build(ids))
    torch.testing.assert_close(got, model.embedding.word_embeddings.weight[ids] + table, rtol=0, atol=1e-6)


# ---- ALiBi -------------------------------------------------------------------------------


def test_alibi_slopes_follow_gpt_neox():
    assert alibi_slopes(8) == [2.0 ** -(i + 1) for i in range(8)]
    twelve = [0.5, 0.25, 0.125, 0.0625, 0.03125, 0.015625, 0.0078125, 0.00390625,
              0.7071067811865476, 0.35355339059327373, 0.17677669529663687, 0.08838834764831843]
    assert alibi_slopes(12) == pytest.approx(twelve, rel=1e-12)


def test_alibi_bias_counts_segments_under_bipe():
    inter = torch.tensor([[0, 0, 1, 1, 3]])
    bias = alibi_bias(inter, torch.tensor([0.5, 1.0]))
    assert bias.shape == (1, 2, 5, 5)
    assert bias[0, 1, 4].tolist() == [-3.0, -3.0, -2.0, -2.0, 0.0]
    assert bias[0, 0, 1, 0] == 0.0 and bias[0, 0, 0, 4] == 0.0  # same segment / a later key
