"""SepLLM attention composed from FlashAttention-4 calls, against our Triton kernels and causal attention.

    # on the GPU, after `. benchmarks/device/install_fa4.sh install` (carry .devcarry/pg19_neox20b.npy)
    python benchmarks/fa4_composition.py --out results_dir
    python benchmarks/fa4_composition.py --rows 8192:128:16:16:2:256:pg19

Why this exists: FlashAttention-4 (`flash_attn.cute`, CuTe DSL, pinned to 4.0.0b36) has warp-specialized
Hopper kernels with local windows, a `mask_mod`, block sparsity and LSE output, so SepLLM attention can
be written as two of its calls merged by log-sum-exp:
  band: local attention on q, k, v as they are, window (n, 0);
  far:  q against a compact copy of the kept keys (gathered per row), mask_mod `kv < cnt[b, q]` where
        cnt[b, q] = kept keys at positions <= q - W; block-sparse tensors built from the counts, so that
        blocks every query of a tile sees skip the mask and blocks nobody sees are skipped;
  merge: a Triton kernel weights the two outputs by their LSEs.
The backward runs both FlashAttention-4 backward kernels with the merged output and LSE (the exact
gradient of each part) and scatter-adds the compact dK/dV. "hybrid" is the FlashAttention-4 forward with
our Triton backward. Everything is timed in one run with cuDNN's and FlashAttention-4's causal attention.
It calls FlashAttention-4's internal _flash_attn_fwd/_flash_attn_bwd (the public function has no way to
hand the merged LSE to the backward), hence the pinned version.
"""
from __future__ import annotations

import argparse
import importlib
import math
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import triton  # noqa: E402
import triton.testing  # noqa: E402
import triton.language as tl  # noqa: E402

from sep_attention import Row, _fa4_version, make_ids  # noqa: E402

BLOCK = 128  # FlashAttention-4's SM90 tile at head dim 64-128 (forward 128 x 128; backward 64 x 128)
DEFAULT_ROWS = ["2048:64:12:12:8:64:pg19", "8192:128:16:16:2:256:pg19", "32768:128:16:16:1:256:pg19",
                "131072:128:8:8:1:256:pg19"]


@triton.jit
def _merge_kernel(OB, OF, LB, LF, O, LSE2, L, H, D: tl.constexpr, BM: tl.constexpr):
    """out = LSE-weighted band and far outputs ([B, L, H, D]); LSE2 in log2 units ([B, H, L]) for our backward."""
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    rows = pid_m * BM + tl.arange(0, BM)
    ok = rows < L
    lb = tl.load(LB + bh.to(tl.int64) * L + rows, mask=ok, other=0.0)
    lf = tl.load(LF + bh.to(tl.int64) * L + rows, mask=ok, other=float("-inf"))
    # a query with no far key yet: FlashAttention reports a non-finite LSE (and may leave NaN rows)
    lf = tl.where((lf == lf) & (lf != float("inf")), lf, float("-inf"))
    m = tl.maximum(lb, lf)
    wb = tl.exp(lb - m)
    wf = tl.exp(lf - m)
    s = wb + wf
    offs = ((b.to(tl.int64) * L + rows)[:, None] * H + h) * D + tl.arange(0, D)[None, :]
    ob = tl.load(OB + offs, mask=ok[:, None], other=0.0).to(tl.float32)
    of = tl.load(OF + offs, mask=ok[:, None] & (wf > 0)[:, None], other=0.0).to(tl.float32)
    o = ob * (wb / s)[:, None] + of * (wf / s)[:, None]
    tl.store(O + offs, o.to(O.dtype.element_ty), mask=ok[:, None])
    tl.store(LSE2 + bh.to(tl.int64) * L + rows, (m + tl.log(s)) * 1.4426950408889634, mask=ok)


def merge(ob, of, lb, lf):
    B, L, H, D = ob.shape
    out = torch.empty_like(ob)
    lse2 = torch.empty(B, H, L, device=ob.device, dtype=torch.float32)
    _merge_kernel[(triton.cdiv(L, 64), B * H)](ob, of, lb, lf, out, lse2, L, H, D, 64, num_warps=4)
    return out, lse2


def far_mask_mod():
    import cutlass
    import cutlass.cute as cute
    from flash_attn.cute import utils as fu

    @cute.jit
    def far_mask(batch, head, q_idx, kv_idx, seqlen_info, aux_tensors):
        cnt = fu.scalar_to_ssa(aux_tensors[0][batch[0], q_idx[0]], cutlass.Int32)
        return kv_idx < cnt

    return far_mask


def block_classes(cnt: torch.Tensor, L: int, n_compact: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(partial, full): [B, L / BLOCK, n_compact / BLOCK] bool, which compact key blocks each query block sees.

    Key block c is full for query block r when every query of r sees all its keys (counts only grow
    along a row, so the first query decides), partial when the last query sees some of them.
    """
    B = cnt.shape[0]
    c = cnt.view(B, L // BLOCK, BLOCK)
    lo, hi = c[:, :, 0].long(), c[:, :, -1].long()
    kb = torch.arange(n_compact // BLOCK, device=cnt.device)
    full = (kb[None, None, :] + 1) * BLOCK <= lo[:, :, None]
    part = ~full & (kb[None, None, :] * BLOCK < hi[:, :, None])
    return part, full


def pack(m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, R, C] bool -> counts [B, 1, R] and indices [B, 1, R, C], listed blocks first and in order (head dim 1: broadcast)."""
    C = m.shape[-1]
    ar = torch.arange(C, device=m.device)
    idx = torch.where(m, ar, C + ar).argsort(-1).to(torch.int32)
    return m.sum(-1).to(torch.int32)[:, None].contiguous(), idx[:, None].contiguous()


def block_sparse(cnt: torch.Tensor, L: int, n_compact: int):
    """FlashAttention-4's forward (query-major) and backward (key-major) block-sparse tensors of the far part."""
    from flash_attn.cute.block_sparsity import BlockSparseTensorsTorch

    part, full = block_classes(cnt, L, n_compact)
    fwd = BlockSparseTensorsTorch(*pack(part), *pack(full), block_size=(BLOCK, BLOCK))
    bwd = BlockSparseTensorsTorch(*pack(part.transpose(1, 2)), *pack(full.transpose(1, 2)), block_size=(BLOCK, BLOCK))
    return fwd, bwd


def bench(fn, rep: int = 200) -> float:
    return float(triton.testing.do_bench(fn, warmup=10, rep=rep, return_mode="median"))


def run_row(row: Row) -> dict:
    from flash_attn.cute import flash_attn_func
    from flash_attn.cute.interface import _flash_attn_bwd, _flash_attn_fwd
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from megatron.neox_arguments.sepllm import SepLLMArgs
    from megatron.sepllm.kernel import ops, plan_layout
    from megatron.sepllm.kernel.testing import rel_err
    from megatron.sepllm.mask import build_attention_plan

    if row.L % BLOCK:
        raise SystemExit(f"L must be a multiple of {BLOCK} here, got {row.L}")
    dev = torch.device("cuda")
    ids, _ = make_ids(row, 0, dev)
    plan = build_attention_plan(ids, SepLLMArgs(separator_token_ids="gpt-neox-20b", prefill_local_window_size=row.n), 1)
    lay = plan_layout(plan, 0, dev)
    g = torch.Generator(device=dev).manual_seed(0)
    B, H, Hkv, L, D, n = row.B, row.H, row.Hkv, row.L, row.D, row.n
    q, do = (torch.randn(B, H, L, D, device=dev, dtype=torch.bfloat16, generator=g) for _ in range(2))
    k, v = (torch.randn(B, Hkv, L, D, device=dev, dtype=torch.bfloat16, generator=g) for _ in range(2))
    W, sc = n + 1, 1 / math.sqrt(D)
    # FlashAttention-4's layout is [B, L, H, D], as a fused QKV projection makes it; ours takes any strides
    qs, ks, vs, dos = (t.transpose(1, 2).contiguous() for t in (q, k, v, do))
    qb, kb_, vb, dob = (t.transpose(1, 2) for t in (qs, ks, vs, dos))  # the same memory, [B, H, L, D] views
    far_mask = far_mask_mod()
    r: dict = dict(row=row)

    # ours
    def triton_step():
        out, lse = ops.forward(qb, kb_, vb, lay, W, sc, False)
        return out, lse, ops.backward(dob, qb, kb_, vb, out, lse, lay, W, sc, False)
    out_ref, _, (dq_ref, dk_ref, dv_ref) = triton_step()
    r["triton"] = bench(triton_step)

    # the FlashAttention-4 composition
    def fa4_plan():
        Nc = int(math.ceil(max(int(lay.kept_count[:, L].max()), 1) / BLOCK) * BLOCK)  # one host sync per batch
        idx = lay.kept_pos[:, :Nc].clamp(max=L - 1).long()[:, :, None, None].expand(B, Nc, Hkv, D)
        pos = (torch.arange(L, device=dev) - W + 1).clamp(min=0).expand(B, L)
        cnt = lay.kept_count.gather(1, pos).to(torch.int32).contiguous()
        return (idx, cnt, *block_sparse(cnt, L, Nc))
    idx, cnt, bs_fwd, bs_bwd = fa4_plan()
    r["fa4 plan"] = bench(fa4_plan)

    def fa4_fwd():
        kc, vc = ks.gather(1, idx), vs.gather(1, idx)
        ob, lb, *_ = _flash_attn_fwd(qs, ks, vs, softmax_scale=sc, causal=True, window_size_left=n,
                                     window_size_right=0, return_lse=True)
        of, lf, *_ = _flash_attn_fwd(qs, kc, vc, softmax_scale=sc, mask_mod=far_mask, aux_tensors=[cnt],
                                     block_sparse_tensors=bs_fwd, return_lse=True)
        out, lse2 = merge(ob, of, lb, lf)
        return out, lse2, kc, vc

    def fa4_bwd(out, lse2, kc, vc):
        lse = lse2 * math.log(2)
        dq, dk, dv = _flash_attn_bwd(qs, ks, vs, out, dos, lse, sc, causal=True, window_size_left=n, window_size_right=0)
        dqf, dkc, dvc = _flash_attn_bwd(qs, kc, vc, out, dos, lse, sc, mask_mod=far_mask, aux_tensors=[cnt],
                                        block_sparse_tensors=bs_bwd)
        return dq.add_(dqf), dk.scatter_add_(1, idx, dkc), dv.scatter_add_(1, idx, dvc)

    fwd_res = fa4_fwd()
    grads = fa4_bwd(*fwd_res)
    r["err fa4"] = max(rel_err(fwd_res[0].transpose(1, 2), out_ref),
                       *(rel_err(a.transpose(1, 2), b) for a, b in zip(grads, (dq_ref, dk_ref, dv_ref))))
    r["fa4 fwd"] = bench(fa4_fwd)
    r["fa4 bwd"] = bench(lambda: fa4_bwd(*fwd_res))
    r["fa4"] = bench(lambda: fa4_bwd(*fa4_fwd()))

    def hybrid():
        out, lse2, _, _ = fa4_fwd()
        return ops.backward(dob, qb, kb_, vb, out.transpose(1, 2), lse2, lay, W, sc, False)
    hg = hybrid()
    r["err hybrid"] = max(rel_err(a, b) for a, b in zip(hg, (dq_ref, dk_ref, dv_ref)))
    r["hybrid"] = bench(hybrid)

    # extra memory of the composition's forward + backward beyond inputs, output and gradients
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    res = fa4_fwd()
    gr = fa4_bwd(*res)
    torch.cuda.synchronize()
    produced = sum(t.numel() * t.element_size() for t in (res[0], *gr))
    qkv = sum(t.numel() * t.element_size() for t in (q, k, v))
    r["fa4 extra %"] = 100 * (torch.cuda.max_memory_allocated() - base - produced) / qkv
    del res, gr

    # causal attention: cuDNN through SDPA, FlashAttention-4
    qg, kg, vg = (t.detach().clone().requires_grad_() for t in (q, k, v))

    def cudnn():
        with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
            o = F.scaled_dot_product_attention(qg, kg, vg, is_causal=True, enable_gqa=Hkv != H)
        torch.autograd.grad(o, (qg, kg, vg), do)
    r["cudnn causal"] = bench(cudnn)
    qf, kf, vf = (t.detach().clone().requires_grad_() for t in (qs, ks, vs))

    def fa4_causal():
        o = flash_attn_func(qf, kf, vf, causal=True)
        o = o[0] if isinstance(o, tuple) else o
        torch.autograd.grad(o, (qf, kf, vf), dos)
    r["fa4 causal"] = bench(fa4_causal)
    best = min(r["cudnn causal"], r["fa4 causal"])
    print(f"{row}: " + ", ".join(f"{k_} {v_:.3f}" for k_, v_ in r.items() if isinstance(v_, float)), flush=True)
    r["best"] = best
    return r


def table(results: list[dict]) -> str:
    head = ("| L | D | H/Hkv | B | n | pattern | cuDNN causal ms | FA4 causal ms | SepLLM Triton ms | SepLLM FA4 ms (fwd / bwd) "
            "| hybrid ms | Triton vs fastest causal | FA4 comp. vs fastest | hybrid vs fastest | FA4 plan ms | FA4 extra % qkv | max rel err (FA4 / hybrid) |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        w = r["row"]
        lines.append(
            f"| {w.L} | {w.D} | {w.H}/{w.Hkv} | {w.B} | {w.n} | {w.pattern} | {r['cudnn causal']:.3f} | {r['fa4 causal']:.3f} "
            f"| {r['triton']:.3f} | {r['fa4']:.3f} ({r['fa4 fwd']:.3f} / {r['fa4 bwd']:.3f}) | {r['hybrid']:.3f} "
            f"| {r['best'] / r['triton']:.2f}x | {r['best'] / r['fa4']:.2f}x | {r['best'] / r['hybrid']:.2f}x "
            f"| {r['fa4 plan']:.3f} | {r['fa4 extra %']:.0f} | {r['err fa4']:.1e} / {r['err hybrid']:.1e} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", nargs="*", default=DEFAULT_ROWS, help="L:D:H:Hkv:B:n:pattern, as sep_attention.py")
    ap.add_argument("--out", type=Path, help="write table.md here")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] < 9:
        raise SystemExit("fa4_composition.py needs a Hopper (SM90) or newer GPU")
    try:
        importlib.import_module("flash_attn.cute")
    except ImportError as exc:
        raise SystemExit(f"flash_attn.cute is not importable ({exc}): see benchmarks/device/install_fa4.sh") from exc
    print(f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}, "
          f"flash-attn-4 {_fa4_version()}", flush=True)
    results = [run_row(Row.parse(t)) for t in args.rows]
    text = table(results)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "table.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
