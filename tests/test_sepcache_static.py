"""The fixed-shape (CUDA-graph) token-by-token cache against the brute-force rules and the dynamic cache."""
import random

import pytest
import torch
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, LlamaConfig, LlamaForCausalLM

from megatron.inference.graphed_step import GraphedTokenStep
from megatron.sepllm.cache import CacheBudget, RotarySpec
from megatron.sepllm.cache.static_cache import StaticSepKVCache
from megatron.sepllm.hf import SepCache, apply_sepllm
from tests.test_sepcache_core import BUDGETS, SEPS, _hf_rotate, budget_id, random_case


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("budget", BUDGETS, ids=budget_id)
def test_static_cache_follows_the_brute_force_rules(budget, seed):
    ids, want_seen, want_kept = random_case(budget, random.Random(seed))
    L = ids.shape[1]
    cache = StaticSepKVCache(budget, SEPS)
    for t in range(L):
        before = cache.layout
        orig_before = None if before is None else before.orig[0].clone()
        plan = cache.begin(ids[:, t:t + 1])
        vis = plan.visible[0, 0]
        orig = orig_before if orig_before is not None else torch.zeros(cache.slots, dtype=torch.long)
        orig = orig.clone()
        slot = int(cache._slot[0, 0])
        orig[slot] = t
        assert sorted(orig[vis].tolist()) == want_seen[t], f"step {t}"
        for layer in range(2):
            k = torch.randn(1, 1, 1, 4)
            cache.update(layer, k, k.clone())
            cache.finish_layer(layer)
    assert cache.kept_orig_positions(0) == want_kept
    assert cache.max_held() <= budget.capacity


@pytest.mark.parametrize("policy", ["sepllm", "streamingllm"])
def test_static_keys_sit_at_their_cache_positions(policy):
    """With position shifting the held keys are the raw keys rotated to positions 0..n-1, as in the dynamic cache."""
    spec = RotarySpec.from_base(8, 10000.0)
    budget = CacheBudget.sepllm(2, 3, 4, 12) if policy == "sepllm" else CacheBudget.streamingllm(2, 9)
    cache = StaticSepKVCache(budget, SEPS, pos_shift=True, rotary=spec)
    rnd = random.Random(1)
    ids = torch.tensor([[rnd.choice([0, 1, 2, 3]) for _ in range(70)]])
    raw = torch.randn(1, 2, 70, 8, dtype=torch.float64)
    for t in range(70):
        plan = cache.begin(ids[:, t:t + 1])
        k_new = _hf_rotate(raw[:, :, t:t + 1], plan.new_positions, spec)
        cache.update(0, k_new, k_new)
        cache.finish_layer(0)
    kept = cache.kept_orig_positions(0)
    held = cache.layer_kv(0)[0][0]
    torch.testing.assert_close(held, _hf_rotate(raw[:, :, kept], torch.arange(len(kept))[None], spec)[0])


def _tiny(family):
    torch.manual_seed(0)
    if family == "llama":
        cfg = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
        return LlamaForCausalLM(cfg).eval()
    cfg = GPTNeoXConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, rotary_pct=0.25, max_position_embeddings=512)
    return GPTNeoXForCausalLM(cfg).eval()


@pytest.mark.parametrize("family", ["llama", "gpt_neox"])
@pytest.mark.parametrize("pos_shift", [True, False])
@pytest.mark.parametrize("policy", ["sepllm", "streamingllm"])
def test_static_token_mode_equals_the_dynamic_cache(family, pos_shift, policy):
    model = _tiny(family)
    apply_sepllm(model, separator_token_ids=[3, 7])
    ids = torch.randint(0, 12, (1, 90))

    def logits(static):
        if policy == "sepllm":
            cache = SepCache(2, 4, 8, 20, pos_shift=pos_shift, static=static)
        else:
            cache = SepCache(2, 0, 18, 20, policy="streamingllm", pos_shift=pos_shift, static=static)
        step = GraphedTokenStep(model, cache) if static else None
        out = []
        with torch.no_grad():
            for t in range(ids.shape[1]):
                x = ids[:, t:t + 1]
                out.append((step(x) if static else model(x, past_key_values=cache, use_cache=True).logits).clone())
        return torch.cat(out, 1), cache

    dyn, dcache = logits(False)
    sta, scache = logits(True)
    torch.testing.assert_close(sta, dyn, rtol=1e-5, atol=1e-5)
    assert scache.core.kept_orig_positions(0) == dcache.core.kept_orig_positions(0)
    assert scache.core.max_held() == 20


def test_static_cache_refuses_what_it_cannot_do():
    budget = CacheBudget.sepllm(2, 3, 4, 12)
    with pytest.raises(ValueError, match="one token per forward"):
        StaticSepKVCache(budget, SEPS).begin(torch.zeros(1, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="rotates keys at eviction only"):
        StaticSepKVCache(budget, SEPS, shift_strategy="read")
    with pytest.raises(ValueError, match="static=True"):
        GraphedTokenStep(_tiny("llama"), SepCache(2, 3, 4, 12))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (CUDA graph capture)")
@pytest.mark.parametrize("family", ["llama", "gpt_neox"])
def test_cuda_graph_replay_equals_eager_steps(family):
    model = _tiny(family).cuda()
    apply_sepllm(model, separator_token_ids=[3, 7])
    ids = torch.randint(0, 12, (1, 80), device="cuda")
    outs = {}
    for graphs in (False, True):
        cache = SepCache(2, 4, 8, 20, pos_shift=True, static=True)
        step = GraphedTokenStep(model, cache, use_graph=graphs)
        outs[graphs] = torch.cat([step(ids[:, t:t + 1]).clone() for t in range(ids.shape[1])], 1)
        assert (step._graph is not None) == graphs
    torch.testing.assert_close(outs[True], outs[False], rtol=1e-4, atol=1e-4)
