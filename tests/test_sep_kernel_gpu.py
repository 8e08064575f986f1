"""Compiled Sep-Attention kernels on CUDA: exactness, long sequences, recompiles, memory."""
import math

import pytest
import torch

pytestmark = pytest.mark.gpu
if not torch.cuda.is_available():
    pytest.skip("needs CUDA", allow_module_level=True)
pytest.importorskip("triton")

from megatron.neox_arguments.sepllm import SepLLMArgs  # noqa: E402
from megatron.sepllm.attention import sepllm_attention  # noqa: E402
from megatron.sepllm.kernel import compiled_kernel_count, sep_attention_kernel  # noqa: E402
from megatron.sepllm.kernel.ops import interpreted  # noqa: E402
from megatron.sepllm.kernel.testing import Case, random_qkv, reference_attention, rel_err, spot_check_rows  # noqa: E402
from megatron.sepllm.mask import build_attention_plan  # noqa: E402

if interpreted():
    pytest.skip("TRITON_INTERPRET is set: these tests need the compiled kernels", allow_module_level=True)

CUDA = torch.device("cuda")


def _errors(case: Case, dtype=torch.bfloat16, layer=0):
    """Relative errors of the kernel and of masked bf16 SDPA, both against float64, out and grads."""
    _, plan, _ = case.build(CUDA)
    q, k, v = random_qkv(case, dtype, CUDA)
    g = torch.Generator(device=CUDA).manual_seed(case.seed + 3)
    dout = torch.randn(q.shape, generator=g, device=CUDA, dtype=dtype)
    mask = plan.dense_mask(layer)
    qd, kd, vd = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref = reference_attention(qd, kd, vd, mask)
    ref_g = torch.autograd.grad(ref, (qd, kd, vd), dout.double())

    out = sep_attention_kernel(q, k, v, plan, layer)
    got_g = torch.autograd.grad(out, (q, k, v), dout)
    rep = q.shape[1] // k.shape[1]
    kk, vv = (t.repeat_interleave(rep, dim=1) for t in (k, v))
    base = torch.nn.functional.scaled_dot_product_attention(q, kk, vv, attn_mask=mask)
    base_g = torch.autograd.grad(base, (q, k, v), dout)
    ours = [rel_err(out, ref)] + [rel_err(a, b) for a, b in zip(got_g, ref_g)]
    sdpa = [rel_err(base, ref)] + [rel_err(a, b) for a, b in zip(base_g, ref_g)]
    return ours, sdpa


@pytest.mark.parametrize(
    "case",
    [
        Case(B=2, H=4, Hkv=4, L=2048, D=64, vocab=20, sep=dict(prefill_local_window_size=64)),
        Case(B=1, H=8, Hkv=2, L=1536, D=128, vocab=40, sep=dict(prefill_local_window_size=256)),
        Case(B=2, H=2, Hkv=2, L=1000, D=96, vocab=12, sep=dict(prefill_local_window_size=100, EXCLUDE_DIAGONAL=False)),
        Case(B=2, H=4, Hkv=4, L=1024, D=64, vocab=30, docs=True, sep=dict(prefill_local_window_size=128)),
        Case(B=3, H=2, Hkv=1, L=777, D=64, left_pad=True, sep=dict(prefill_local_window_size=50, BATCH_ADAPTIVE_INIT_POS=True)),
        Case(B=1, H=4, Hkv=4, L=1024, D=128, sep=dict(prefill_local_window_size=32, streamingLLM=True)),
    ],
    ids=["pythia-2k", "gqa-d128", "d96-odd-len", "docs", "left-pad", "streaming"],
)
def test_bf16_as_accurate_as_masked_sdpa(case):
    ours, sdpa = _errors(case)
    for name, a, b in zip(("out", "dq", "dk", "dv"), ours, sdpa):
        assert a <= 2 * b + 2e-3, f"{name}: kernel error {a:.2e} vs bf16 SDPA {b:.2e}"


def test_float32_inputs():
    ours, _ = _errors(Case(B=1, H=2, Hkv=2, L=512, D=64, sep=dict(prefill_local_window_size=40)), dtype=torch.float32)
    assert max(ours) < 5e-3, ours  # tf32 tensor-core products


def test_long_sequence_rows_match_reference():
    case = Case(B=1, H=4, Hkv=4, L=32768, D=128, vocab=40, sep=dict(prefill_local_window_size=256))
    _, plan, _ = case.build(CUDA)
    q, k, v = random_qkv(case, torch.bfloat16, CUDA)
    with torch.no_grad():
        out = sep_attention_kernel(q, k, v, plan, 0)
    rows = torch.cat([torch.arange(0, 128), torch.arange(16000, 16128), torch.arange(32768 - 128, 32768)]).to(CUDA)
    assert spot_check_rows(out, q, k, v, plan, 0, rows, 1 / math.sqrt(128)) < 1e-2


def test_kernel_matches_the_masked_entry_point():
    case = Case(B=2, H=4, Hkv=4, L=512, D=64, vocab=15, sep=dict(prefill_local_window_size=32))
    _, plan, _ = case.build(CUDA)
    q, k, v = random_qkv(case, torch.bfloat16, CUDA)
    fast = sep_attention_kernel(q, k, v, plan, 0)
    slow = sepllm_attention(q, k, v, plan, 0)
    assert getattr(plan, "_sep_kernel_layouts", None), "the kernel path was not taken"
    assert rel_err(fast, slow) < 1e-2


def test_new_batches_never_recompile():
    def run(seed):
        case = Case(B=2, H=4, Hkv=4, L=1024, D=64, vocab=10 + 7 * seed, seed=seed, docs=seed % 2 == 0,
                    sep=dict(prefill_local_window_size=64))
        _, plan, _ = case.build(CUDA)
        q, k, v = random_qkv(case, torch.bfloat16, CUDA)
        out = sep_attention_kernel(q, k, v, plan, 0)
        torch.autograd.grad(out, (q, k, v), torch.randn_like(out))

    run(0), run(1)  # one batch with documents, one without
    compiled = compiled_kernel_count()
    for seed in range(2, 8):
        run(seed)
    assert compiled_kernel_count() == compiled, "a new batch recompiled a Sep-Attention kernel"


def test_torch_compile_fullgraph_without_recompiles():
    import torch._dynamo

    torch._dynamo.reset()

    def step(q, k, v, plan):
        return sep_attention_kernel(q, k, v, plan, 0).float().square().mean()

    compiled = torch.compile(step, fullgraph=True, dynamic=False)
    for seed in range(3):
        case = Case(B=2, H=4, Hkv=2, L=1024, D=64, vocab=10 + 9 * seed, seed=seed, sep=dict(prefill_local_window_size=64))
        _, plan, _ = case.build(CUDA)
        q, k, v = random_qkv(case, torch.bfloat16, CUDA)
        with torch._dynamo.config.patch(error_on_recompile=seed > 0):
            loss = compiled(q, k, v, plan)
            loss.backward()
        want = step(q.detach(), k.detach(), v.detach(), plan)
        assert abs(float(loss) - float(want)) <= 1e-2 * abs(float(want))


def test_recompile_mode_tunes_and_stays_exact(monkeypatch):
    from megatron.sepllm.kernel import configs as C

    # two candidates per kernel keep the compile time of this test short
    small = {kind: [C.default_config(kind, 128), cands[-1]] for kind, cands in C.CANDIDATES.items()}
    monkeypatch.setattr(C, "CANDIDATES", small)
    case = Case(B=1, H=4, Hkv=4, L=2048, D=128, vocab=25, sep=dict(prefill_local_window_size=256))
    _, plan, _ = case.build(CUDA)
    q, k, v = random_qkv(case, torch.bfloat16, CUDA)
    a = sep_attention_kernel(q, k, v, plan, 0)
    b = sep_attention_kernel(q, k, v, plan, 0, recompile=True)
    ga = torch.autograd.grad(a, (q, k, v), torch.ones_like(a))
    gb = torch.autograd.grad(b, (q, k, v), torch.ones_like(b))
    assert rel_err(b, a) < 1e-2
    for x, y in zip(gb, ga):
        assert rel_err(x, y) < 2e-2


def test_extra_memory_is_a_few_percent_of_inputs():
    B, H, L, D = 1, 16, 16384, 128
    ids = torch.randint(100, 1000, (B, L), device=CUDA)
    ids[torch.rand(B, L, device=CUDA) < 0.17] = 13
    plan = build_attention_plan(ids, SepLLMArgs(separator_token_ids="gpt-neox-20b", prefill_local_window_size=256), 1)
    q, k, v = (torch.randn(B, H, L, D, device=CUDA, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    dout = torch.randn_like(q)
    sep_attention_kernel(q, k, v, plan, 0)  # builds the layout (per batch, not per layer)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = sep_attention_kernel(q, k, v, plan, 0)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    torch.cuda.synchronize()
    produced = sum(t.numel() * t.element_size() for t in (out, *grads))
    extra = torch.cuda.max_memory_allocated() - base - produced
    assert extra <= 0.05 * 3 * q.numel() * q.element_size(), f"{extra / 2**20:.1f} MiB extra"
