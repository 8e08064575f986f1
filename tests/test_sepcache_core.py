"""The SepLLM / StreamingLLM KV cache against a brute-force model of upstream's rules."""
import collections
import random

import pytest
import torch
import torch.utils._python_dispatch

from megatron.sepllm.cache import CacheBudget, RotarySpec, SepKVCache, rotate_by
from megatron.sepllm.cache.planner import _simulate_events, _streaming_closed_form

SEPS = [1, 2]


def brute_force(ids, budget):
    """Upstream Streaming-SepLLM, one token at a time, on plain lists of stream positions.

    Returns, per step, the positions the token attends to, and the positions kept at the end."""
    a, s, w, c = budget.init_size, budget.sep_size, budget.local_size, budget.capacity
    cache, sep_end, seen = [], 0, []
    for t in range(len(ids)):
        cache.append(t)
        seen.append(list(cache))
        if len(cache) <= c:
            continue
        if budget.policy == "streamingllm":
            cache = cache[:a] + cache[len(cache) - (c - a):]
            continue
        if sep_end <= 0:
            sep_end = a
        old_seps = cache[a:sep_end]
        past = cache[sep_end:len(cache) - w]
        block = old_seps + [p for p in past if ids[p] in SEPS]
        block = block[-s:]
        sep_end = a + len(block)
        cache = cache[:a] + block + cache[len(cache) - w:]
    return seen, cache


def run_chunks(cache, ids, chunks, valid=None, layers=2, heads=1, dim=4):
    """Feed ids [B, L] in chunks; return, per fed column, each row's visible stream positions."""
    B, L = ids.shape
    valid = torch.ones(B, L, dtype=torch.bool) if valid is None else valid
    seen = [[None] * L for _ in range(B)]
    start = 0
    for size in chunks:
        q_ids, q_valid = ids[:, start:start + size], valid[:, start:start + size]
        before = cache.layout
        plan = cache.begin(q_ids, q_valid)
        orig = torch.cat([before.orig if before is not None else torch.zeros(B, 0, dtype=torch.long),
                          (plan.next_layout.seen[:, None] - q_valid.long().sum(1, keepdim=True) + q_valid.long().cumsum(1) - 1)], 1)
        vis = cache.attention_mask()[:, 0]
        for layer in range(layers):
            k = torch.randn(B, heads, size, dim)
            cache.update(layer, k, k.clone())
            cache.finish_layer(layer)
        for b in range(B):
            for t in range(size):
                if q_valid[b, t]:
                    seen[b][start + t] = sorted(orig[b][vis[b, t]].tolist())
        start += size
    return seen


def random_chunks(L, rnd, max_chunk=9):
    out = []
    while sum(out) < L:
        out.append(min(rnd.randint(1, max_chunk), L - sum(out)))
    return out


BUDGETS = [
    CacheBudget.sepllm(2, 3, 4, 12),
    CacheBudget.sepllm(0, 2, 3, 7),
    CacheBudget.sepllm(3, 1, 2, 7),
    CacheBudget.streamingllm(2, 8),
    CacheBudget.streamingllm(0, 5),
]


def budget_id(b: CacheBudget) -> str:
    return f"{b.policy}-a{b.init_size}s{b.sep_size}w{b.local_size}c{b.capacity}"


def random_case(budget: CacheBudget, rnd: random.Random):
    """A random row of 1-60 tokens over ids 0-5 and what the brute-force rules see and keep for it."""
    L = rnd.randint(1, 60)
    ids = torch.tensor([[rnd.choice([0, 1, 2, 3, 4, 5]) for _ in range(L)]])
    return ids, *brute_force(ids[0].tolist(), budget)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("budget", BUDGETS, ids=budget_id)
def test_token_and_chunked_match_brute_force(budget, seed):
    rnd = random.Random(seed)
    ids, want_seen, want_kept = random_case(budget, rnd)
    L = ids.shape[1]
    for chunks in ([1] * L, random_chunks(L, rnd), [L]):
        cache = SepKVCache(budget, SEPS)
        seen = run_chunks(cache, ids, chunks)
        assert seen[0] == want_seen, f"visible sets differ for chunks {chunks}"
        assert cache.kept_orig_positions(0) == want_kept
        assert cache.held(0) <= budget.capacity and cache.held(1) == cache.held(0)


def test_rows_with_different_separators_and_left_padding_are_independent():
    rnd = random.Random(7)
    budget = CacheBudget.sepllm(2, 3, 4, 12)
    B, L = 3, 50
    ids = torch.tensor([[rnd.choice([0, 1, 2, 3]) if b != 1 else rnd.choice([0, 3, 4, 1]) for _ in range(L)] for b in range(B)])
    valid = torch.ones(B, L, dtype=torch.bool)
    valid[1, :5] = False
    valid[2, :11] = False
    cache = SepKVCache(budget, SEPS)
    seen = run_chunks(cache, ids, [17, 1, 1, 9, 22], valid)
    for b in range(B):
        row = ids[b][valid[b]].tolist()
        want_seen, want_kept = brute_force(row, budget)
        got = [s for s in seen[b] if s is not None]
        assert got == want_seen, f"row {b}"
        assert cache.kept_orig_positions(b) == want_kept, f"row {b}"
    assert cache.held(0) <= budget.capacity


def test_streaming_closed_form_equals_event_simulation():
    """StreamingLLM is SepLLM with no separator block and w = c - a."""
    rnd = random.Random(3)
    budget = CacheBudget.streamingllm(2, 9)
    for _ in range(5):
        B, N, q = 2, rnd.randint(0, 9), rnd.randint(1, 30)
        old = torch.rand(B, N) < 0.8
        new = torch.rand(B, q) < 0.9
        present = torch.cat([old, new], 1)
        init = present & (present.long().cumsum(1) <= budget.init_size)  # the first a real tokens
        seps = torch.zeros(B, N + q, dtype=torch.bool)
        v1, a1 = _streaming_closed_form(old, new, init, budget)
        v2, a2 = _simulate_events(old, new, seps, init, budget)
        real = new[:, :, None]  # padding queries are overridden by plan_chunk (they see only themselves)
        assert torch.equal(v1 & real, v2 & real) and torch.equal(a1, a2)


@pytest.mark.parametrize("bad, match", [
    (dict(init_size=4, sep_size=64, local_size=256, capacity=324), "a \\+ s \\+ w < c"),
    (dict(init_size=-1, sep_size=4, local_size=8, capacity=32), "init_size must not be negative"),
    (dict(init_size=2, sep_size=0, local_size=8, capacity=32), "sep_size"),
    (dict(init_size=2, sep_size=4, local_size=0, capacity=32), "local_size"),
    (dict(init_size=2, sep_size=4, local_size=8, capacity=32, policy="lru"), "policy"),
    (dict(init_size=2, sep_size=0, local_size=8, capacity=32, policy="streamingllm"), "local_size must equal"),
])
def test_bad_budgets_name_the_setting(bad, match):
    with pytest.raises(ValueError, match=match):
        CacheBudget(**bad)


def test_sepllm_cache_without_separators_is_an_error():
    cache = SepKVCache(CacheBudget.sepllm(2, 3, 4, 12))
    with pytest.raises(ValueError, match="separator_token_ids"):
        cache.begin(torch.zeros(1, 3, dtype=torch.long))


def _hf_rotate(x, pos, spec):
    """transformers' apply_rotary_pos_emb (rotate-half, partial rotary) at absolute positions."""
    from transformers.models.gpt_neox.modeling_gpt_neox import rotate_half

    freqs = pos[..., None].double() * spec.inv_freq.double()
    emb = torch.cat([freqs, freqs], -1).to(x.dtype)
    cos, sin = emb.cos()[:, None], emb.sin()[:, None]
    rd = spec.rotary_dim
    rot = x[..., :rd] * cos + rotate_half(x[..., :rd]) * sin
    return torch.cat([rot, x[..., rd:]], -1)


@pytest.mark.parametrize("head_dim, factor", [(8, 1.0), (16, 0.25)])
def test_rotate_by_moves_keys_to_new_positions(head_dim, factor):
    spec = RotarySpec.from_base(head_dim, 10000.0, factor)
    x = torch.randn(2, 3, 5, head_dim, dtype=torch.float64)
    p1 = torch.randint(0, 500, (2, 5))
    p2 = torch.randint(0, 500, (2, 5))
    at_p1 = _hf_rotate(x, p1, spec)
    moved = rotate_by(at_p1, p2 - p1, spec)
    torch.testing.assert_close(moved, _hf_rotate(x, p2, spec), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("policy", ["sepllm", "streamingllm"])
def test_shift_strategies_attend_to_the_same_keys(policy):
    """Keys rotated at eviction and keys rotated on read are the same keys at the same positions."""
    spec = RotarySpec.from_base(8, 10000.0)
    budget = CacheBudget.sepllm(2, 3, 4, 12) if policy == "sepllm" else CacheBudget.streamingllm(2, 9)
    caches = {s: SepKVCache(budget, SEPS, pos_shift=True, rotary=spec, shift_strategy=s) for s in ("evict", "read")}
    rnd = random.Random(0)
    torch.manual_seed(0)
    ids = torch.tensor([[rnd.choice([0, 1, 2, 3]) for _ in range(70)]])
    raw = torch.randn(1, 2, 70, 8, dtype=torch.float64)
    start = 0
    for size in random_chunks(70, rnd, 6):
        outs = {}
        for name, cache in caches.items():
            plan = cache.begin(ids[:, start:start + size])
            k_new = _hf_rotate(raw[:, :, start:start + size], plan.new_positions, spec)
            k, _ = cache.update(0, k_new, k_new)
            outs[name] = (k, plan.union_pos)
            cache.finish_layer(0)
        torch.testing.assert_close(outs["evict"][0], outs["read"][0], rtol=1e-6, atol=1e-9)
        start += size
    kept = caches["evict"].kept_orig_positions(0)
    # The kept keys sit at their positions inside the cache: 0..n-1.
    held = caches["evict"].layer_kv(0)[0][0]
    expect = _hf_rotate(raw[:, :, kept], torch.arange(len(kept))[None], spec)[0]
    torch.testing.assert_close(held, expect)


def _plan_fields(plan):
    layout = plan.next_layout
    return {"visible": plan.visible, "new_positions": plan.new_positions, "union_pos": plan.union_pos,
            "gather": plan.gather, "key_delta": plan.key_delta, "valid": layout.valid, "is_sep": layout.is_sep,
            "is_init": layout.is_init, "orig": layout.orig, "key_pos": layout.key_pos, "seen": layout.seen,
            "columns": layout.columns}


@pytest.mark.parametrize("pos_shift", [False, True])
@pytest.mark.parametrize("budget", [b for b in BUDGETS if b.policy == "sepllm"], ids=budget_id)
def test_decoding_plan_equals_the_event_walk(budget, pos_shift):
    """The one-token path (decoding) gives the same plan as the general event walk, padding
    tokens, rows that compress at different steps and chunks between the tokens included."""
    from megatron.sepllm.cache.planner import _plan_events, _plan_token, separator_tensor

    rnd = random.Random(5)
    torch.manual_seed(5)
    B, L = 3, 120
    ids = torch.tensor([[rnd.choice([0, 1, 2, 3, 4]) for _ in range(L)] for _ in range(B)])
    valid = torch.rand(B, L) > 0.15
    valid[1, :6] = False
    seps = separator_tensor(SEPS, "cpu")
    cache = SepKVCache(budget, SEPS, pos_shift=pos_shift, rotary=RotarySpec.from_base(4, 10000.0))
    start, tokens, compressing = 0, 0, 0
    chunks = [8] + [1 if rnd.random() < 0.8 else rnd.randint(2, 5) for _ in range(L)]
    while sum(chunks) > L:
        chunks.pop()
    for size in chunks:
        q_ids, q_valid = ids[:, start:start + size], valid[:, start:start + size]
        if size == 1 and cache.layout is not None:
            fast = _plan_fields(_plan_token(cache.layout, q_ids, q_valid, budget, seps, pos_shift=pos_shift))
            slow = _plan_fields(_plan_events(cache.layout, q_ids, q_valid, budget, seps, pos_shift=pos_shift))
            for name in slow:
                a, b = fast[name], slow[name]
                same = (a is None and b is None) if a is None or b is None else (
                    torch.equal(a, b) and a.dtype == b.dtype if isinstance(a, torch.Tensor) else a == b)
                assert same, f"{name} differs at column {start}"
            tokens += 1
            compressing += cache.layout.width + 1 > budget.capacity
        run_chunks(cache, ids[:, start:start + size], [size], q_valid, layers=1)
        start += size
    assert tokens > 30 and compressing > 8


class _HostReads(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts the ATen operations that read a device value back to the host (a CUDA synchronisation)."""

    SYNC = {"_local_scalar_dense", "nonzero", "masked_select", "unique", "_unique", "_unique2", "unique_consecutive",
            "equal", "allclose", "is_nonzero"}

    def __init__(self):
        super().__init__()
        self.reads, self.ops = 0, collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name.split("::")[-1]
        self.ops[name] += 1
        bool_index = name in ("index", "index_put", "index_put_") and any(
            isinstance(t, torch.Tensor) and t.dtype == torch.bool for t in (args[1] or []))
        self.reads += name in self.SYNC or bool_index
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("strategy", [None, "evict", "read"])
def test_decoding_reads_back_only_when_a_row_may_compress(strategy):
    """A decoding step reads nothing back to the host (no CUDA sync) unless the cache may
    compress in it, and then only the widest row's count (the new width)."""
    budget = CacheBudget.sepllm(2, 3, 4, 12)
    kw = {} if strategy is None else dict(pos_shift=True, shift_strategy=strategy, rotary=RotarySpec.from_base(4, 10000.0))
    cache = SepKVCache(budget, SEPS, **kw)
    rnd = random.Random(1)
    B = 2
    cache.begin(torch.tensor([[rnd.choice([0, 1, 3]) for _ in range(9)] for _ in range(B)]))
    for layer in range(2):
        cache.update(layer, torch.randn(B, 1, 9, 4), torch.randn(B, 1, 9, 4))
    quiet = 0
    for _ in range(60):
        may_compress = cache.layout.width + 1 > budget.capacity
        with _HostReads() as mode:
            cache.begin(torch.tensor([[rnd.choice([0, 1, 3])] for _ in range(B)]))
            for layer in range(2):
                cache.update(layer, torch.randn(B, 1, 1, 4), torch.randn(B, 1, 1, 4))
                cache.attention_mask()
                cache.finish_layer(layer)
        assert mode.reads <= (1 if may_compress else 0)
        quiet += not may_compress
    assert quiet > 20
