"""Shared case builders and float64 references for the Sep-Attention kernel tests and benchmark."""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F

from megatron.neox_arguments.sepllm import SepLLMArgs
from megatron.sepllm.mask import AttentionPlan, build_attention_plan, document_ids_from_eod

SEPS = [3, 5, 7]
EOD = 9
PAD = 0


@dataclass
class Case:
    B: int = 2
    H: int = 2
    Hkv: int = 2
    L: int = 64
    D: int = 16
    vocab: int = 10  # ids in [1, vocab): with SEPS = 3 of them, ~1/3 separators at vocab 10
    layers: int = 1
    sep: dict = field(default_factory=dict)  # SepLLMArgs overrides
    docs: bool = False
    left_pad: bool = False  # left padding + key_valid (+ BATCH_ADAPTIVE_INIT_POS if set in sep)
    seed: int = 0

    def build(self, device="cpu") -> tuple[torch.Tensor, AttentionPlan, SepLLMArgs]:
        g = torch.Generator().manual_seed(self.seed)
        ids = torch.randint(1, self.vocab, (self.B, self.L), generator=g)
        key_valid = None
        if self.left_pad:
            for b in range(self.B):
                ids[b, : (b * 7) % max(self.L // 2, 1)] = PAD
            key_valid = ids != PAD
        doc_ids = None
        if self.docs:
            eod = torch.rand(self.B, self.L, generator=g) < 0.06
            ids = torch.where(eod, torch.full_like(ids, EOD), ids)
            doc_ids = document_ids_from_eod(ids, EOD)
        kw = dict(separator_token_ids=SEPS, PADDING_ID=PAD)
        kw.update(self.sep)
        cfg = SepLLMArgs(**kw)
        ids = ids.to(device)
        plan = build_attention_plan(
            ids, cfg, self.layers,
            doc_ids=None if doc_ids is None else doc_ids.to(device),
            key_valid=None if key_valid is None else key_valid.to(device),
        )
        return ids, plan, cfg


def random_qkv(case: Case, dtype=torch.float32, device="cpu", seed=None, layout="bhld"):
    """q [B,H,L,D], k/v [B,Hkv,L,D]; layout "blhd" returns transposed views of [B,L,H,D] storage."""
    g = torch.Generator(device=device).manual_seed(case.seed + 1 if seed is None else seed)

    def make(h):
        if layout == "blhd":
            return torch.randn(case.B, case.L, h, case.D, generator=g, device=device, dtype=dtype).transpose(1, 2)
        return torch.randn(case.B, h, case.L, case.D, generator=g, device=device, dtype=dtype)

    return tuple(t.requires_grad_() for t in (make(case.H), make(case.Hkv), make(case.Hkv)))


def reference_attention(q, k, v, mask: torch.Tensor, scale: Optional[float] = None):
    """Masked SDPA in float64 (mask [B,1,L,L] bool); GQA by repeating KV heads."""
    rep = q.shape[1] // k.shape[1]
    kk = k.double().repeat_interleave(rep, dim=1)
    vv = v.double().repeat_interleave(rep, dim=1)
    return F.scaled_dot_product_attention(q.double(), kk, vv, attn_mask=mask, scale=scale)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    assert torch.isfinite(a).all(), "non-finite values in the kernel result"
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def check_case(kernel, case: Case, layer: int = 0, dtype=torch.float32, device="cpu", tol=1e-5, layout="bhld",
               scale=None):
    """Kernel forward and q/k/v gradients against float64 masked SDPA; returns the errors."""
    _, plan, _ = case.build(device)
    q, k, v = random_qkv(case, dtype, device, layout=layout)
    out = kernel(q, k, v, plan, layer, scale=scale)
    assert out.shape == q.shape and out.dtype == q.dtype
    g = torch.Generator(device=device).manual_seed(case.seed + 7)
    dout = torch.randn(out.shape, generator=g, device=device, dtype=dtype)
    grads = torch.autograd.grad(out, (q, k, v), dout)

    mask = plan.dense_mask(layer).to(device)
    qd, kd, vd = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref = reference_attention(qd, kd, vd, mask, scale)
    ref_grads = torch.autograd.grad(ref, (qd, kd, vd), dout.double())
    errs = {"out": rel_err(out, ref)}
    for name, got, want in zip(("dq", "dk", "dv"), grads, ref_grads):
        errs[name] = rel_err(got, want)
    bad = {n: e for n, e in errs.items() if not e < tol}
    assert not bad, f"{case} layer {layer}: relative errors above {tol}: {bad}"
    return errs


def random_case(seed: int, max_len: int = 96, max_dim: int = 32) -> Case:
    """A random small configuration covering the scope: windows, GQA, docs, padding, modes."""
    rnd = random.Random(seed)
    H = rnd.choice([1, 2, 4])
    Hkv = rnd.choice([h for h in (1, 2, 4) if H % h == 0])
    sep = dict(
        prefill_local_window_size=rnd.choice([1, 2, 5, 16, 33, 70]),
        init_tok_max_idx=rnd.choice([-1, 0, 2, 4]),
        EXCLUDE_DIAGONAL=rnd.random() < 0.7,
        streamingLLM=rnd.random() < 0.15,
    )
    left_pad = rnd.random() < 0.25
    if left_pad and rnd.random() < 0.5:
        sep["BATCH_ADAPTIVE_INIT_POS"] = True
    return Case(
        B=rnd.choice([1, 2]), H=H, Hkv=Hkv, L=rnd.randint(20, max_len), D=rnd.choice([16, 24, max_dim]),
        vocab=rnd.choice([8, 12, 25, 60]), sep=sep, docs=rnd.random() < 0.3, left_pad=left_pad, seed=seed,
    )


def mask_rows(plan: AttentionPlan, layer: int, rows: torch.Tensor) -> torch.Tensor:
    """[B, len(rows), L] bool: the SepLLM rule for some query rows only (spot checks at long L)."""
    ref = plan._ref()
    B, L = ref.shape
    i = rows.to(ref.device)[:, None]
    j = torch.arange(L, device=ref.device)[None, :]
    mask = (j <= i).expand(B, -1, -1)
    window = plan.windows[layer]
    if window is not None:
        dist = i - j
        in_window = (dist < window) if plan.exclude_diagonal else (dist <= window)
        mask = mask & (in_window[None] | plan.layer_kept(layer)[:, None, :])
    if plan.doc_ids is not None:
        mask = mask & (plan.doc_ids[:, rows][:, :, None] == plan.doc_ids[:, None, :])
    if plan.key_valid is not None:
        mask = mask & (plan.key_valid[:, None, :] | (i == j)[None])
    return mask


def spot_check_rows(out, q, k, v, plan: AttentionPlan, layer: int, rows: torch.Tensor, scale: float) -> float:
    """Relative error of `out` on some query rows against float32 masked attention on those rows."""
    rep = q.shape[1] // k.shape[1]
    qs = q[:, :, rows].float()
    kk = k.float().repeat_interleave(rep, dim=1)
    vv = v.float().repeat_interleave(rep, dim=1)
    s = torch.matmul(qs, kk.transpose(-1, -2)) * scale
    s = s.masked_fill(~mask_rows(plan, layer, rows)[:, None], float("-inf"))
    ref = torch.matmul(torch.softmax(s, dim=-1), vv)
    return rel_err(out[:, :, rows], ref)
