"""Launchers of the Sep-Attention kernels and their registration as differentiable torch ops.

Eager calls go through a torch.autograd.Function; under torch.compile the same launchers run as
`torch.library` custom ops (sepllm::sep_attention_fwd/bwd), opaque calls with fixed output
shapes: a new batch with other separator counts changes no shape and no guard, and nothing can
silently fall back to an unfused path.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from megatron.sepllm.kernel import configs as C
from megatron.sepllm.kernel import launcher
from megatron.sepllm.kernel import triton_kernels as T
from megatron.sepllm.kernel.layout import SepLayout

LOG2E = 1.4426950408889634
_KERNELS = (T._fwd_kernel, T._bwd_dq_kernel, T._bwd_dkdv_band_kernel, T._bwd_dkdv_far_kernel)


def interpreted() -> bool:
    """True when the kernels were created under TRITON_INTERPRET=1 (they then run on CPU tensors)."""
    return launcher.interpreted(T._fwd_kernel)


def compiled_kernel_count() -> int:
    """Number of compiled variants of all Sep-Attention kernels so far (the recompile check reads it)."""
    if interpreted():
        return 0
    total = 0
    for kernel in _KERNELS:
        for cache in kernel.device_caches.values():
            total += len(cache[0])
    return total


def _block_d(head_dim: int) -> int:
    return max(16, 1 << (head_dim - 1).bit_length())


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _meta(layout: SepLayout):
    """Kernel pointer arguments; absent tensors are replaced by a dummy the kernels never read."""
    dummy = layout.kept_pos
    return (
        layout.doc if layout.doc is not None else dummy,
        layout.doc_start if layout.doc_start is not None else dummy,
        layout.doc_end if layout.doc_end is not None else dummy,
        layout.valid if layout.valid is not None else dummy,
        layout.doc is not None,
        layout.valid is not None,
    )


def _cfg(kind: str, head_dim: int) -> C.BlockConfig:
    return C.INTERPRETER if interpreted() else C.default_config(kind, head_dim)


def _consts(D: int, cfg: C.BlockConfig, *flags: bool) -> tuple:
    return (D, _block_d(D), cfg.block_m, cfg.block_n, cfg.wide, *flags)


def launch_forward(q, k, v, layout: SepLayout, window: int, scale: float, cfg: Optional[C.BlockConfig] = None):
    B, H, L, D = q.shape
    cfg = cfg or _cfg(C.FWD, D)
    out = torch.empty_like(q)
    lse = torch.empty(B, H, L, device=q.device, dtype=torch.float32)
    doc, doc_start, _, valid, has_docs, has_valid = _meta(layout)
    launcher.launch(
        T._fwd_kernel, (B * H, _cdiv(L, cfg.block_m)), cfg,  # heads fastest: see _fwd_kernel
        (q, k, v, out, lse, layout.kept_pos, layout.kept_count, doc, doc_start, valid),
        (*q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *out.stride()[:3]),
        (L, window, H, scale * LOG2E, H // k.shape[1]),
        _consts(D, cfg, has_docs, has_valid),
    )
    return out, lse


def launch_dq(do, q, k, v, out, lse, layout: SepLayout, window: int, scale: float, cfg: Optional[C.BlockConfig] = None):
    """dQ, and DELTA = rowsum(out * dO) that the dK/dV kernels need (launch them after this)."""
    B, H, L, D = q.shape
    cfg = cfg or _cfg(C.DQ, D)
    dq = torch.empty_like(q)
    delta = torch.empty(B, H, L, device=q.device, dtype=torch.float32)
    doc, doc_start, _, valid, has_docs, has_valid = _meta(layout)
    launcher.launch(
        T._bwd_dq_kernel, (_cdiv(L, cfg.block_m), B * H), cfg,
        (q, k, v, out, do, dq, lse, delta, layout.kept_pos, layout.kept_count, doc, doc_start, valid),
        (*q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *out.stride()[:3], *do.stride()[:3], *dq.stride()[:3]),
        (L, window, H, scale * LOG2E, scale, H // k.shape[1]),
        _consts(D, cfg, has_docs, has_valid),
    )
    return dq, delta


def _dkdv_strides(do, q, k, v, dk, dv) -> tuple:
    return (*q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *do.stride()[:3], *dk.stride()[:3], *dv.stride()[:3])


def launch_dkdv_band(do, q, k, v, lse, delta, layout: SepLayout, window: int, scale: float,
                     cfg: Optional[C.BlockConfig] = None):
    """dK, dV from the window band: writes every row of new dk, dv tensors."""
    dk, dv = torch.empty_like(k), torch.empty_like(v)
    B, H, L, D = q.shape
    Hkv = k.shape[1]
    cfg = cfg or _cfg(C.DKDV, D)
    doc, _, _, valid, has_docs, has_valid = _meta(layout)
    launcher.launch(
        T._bwd_dkdv_band_kernel, (_cdiv(L, cfg.block_n), B * Hkv), cfg,
        (q, k, v, do, dk, dv, lse, delta, doc, valid),
        _dkdv_strides(do, q, k, v, dk, dv),
        (L, window, H, scale * LOG2E, scale, H // Hkv),
        (D, _block_d(D), cfg.block_m, cfg.block_n, has_docs, has_valid),  # no mask-free run: no WIDE
    )
    return dk, dv


def launch_dkdv_far(do, q, k, v, lse, delta, layout: SepLayout, window: int, scale: float, dk, dv,
                    cfg: Optional[C.BlockConfig] = None):
    """Adds the far-part gradient of the kept keys to dk, dv in place (after launch_dkdv_band)."""
    B, H, L, D = q.shape
    Hkv = k.shape[1]
    if window > L:  # a window covering the sequence leaves no far part
        return
    cfg = cfg or _cfg(C.DKDV_FAR, D)
    doc, _, doc_end, _, has_docs, _ = _meta(layout)
    launcher.launch(
        T._bwd_dkdv_far_kernel, (B * Hkv, _cdiv(L, cfg.block_n)), cfg,  # heads fastest: see the kernel
        (q, k, v, do, dk, dv, lse, delta, layout.kept_pos, layout.kept_count, doc, doc_end),
        _dkdv_strides(do, q, k, v, dk, dv),
        (L, window, H, scale * LOG2E, scale, H // Hkv),
        _consts(D, cfg, has_docs),
    )


def _shape_key(q, k, layout: SepLayout, window: int):
    return (tuple(q.shape), k.shape[1], q.dtype, window, layout.doc is not None, layout.valid is not None)


def _bench(fn) -> float:
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=5, rep=20, return_mode="median"))


def _tuned(kind: str, key, fn) -> C.BlockConfig:
    return C.tuned_config(kind, key, C.CANDIDATES[kind], lambda cfg: _bench(lambda: fn(cfg)))


def _last_dim_contiguous(*tensors: torch.Tensor) -> tuple:
    """The kernels take any strides but the last (inductor may hand the custom ops other layouts)."""
    return tuple(t if t.stride(-1) == 1 else t.contiguous() for t in tensors)


def forward(q, k, v, layout: SepLayout, window: int, scale: float, recompile: bool):
    """(out, lse) of the Sep-Attention forward."""
    q, k, v = _last_dim_contiguous(q, k, v)
    cfg = None
    if recompile and not interpreted():
        cfg = _tuned(C.FWD, _shape_key(q, k, layout, window),
                     lambda c: launch_forward(q, k, v, layout, window, scale, c))
    return launch_forward(q, k, v, layout, window, scale, cfg)


def backward(do, q, k, v, out, lse, layout: SepLayout, window: int, scale: float, recompile: bool):
    """(dq, dk, dv) of the Sep-Attention backward."""
    do, q, k, v, out = _last_dim_contiguous(do, q, k, v, out)
    cfg_dq = cfg_band = cfg_far = None
    if recompile and not interpreted():
        key = _shape_key(q, k, layout, window)
        cfg_dq = _tuned(C.DQ, key, lambda c: launch_dq(do, q, k, v, out, lse, layout, window, scale, c))
        _, delta = launch_dq(do, q, k, v, out, lse, layout, window, scale, cfg_dq)
        cfg_band = _tuned(C.DKDV, key, lambda c: launch_dkdv_band(do, q, k, v, lse, delta, layout, window, scale, c))
        dk, dv = launch_dkdv_band(do, q, k, v, lse, delta, layout, window, scale, cfg_band)
        cfg_far = _tuned(C.DKDV_FAR, key,
                         lambda c: launch_dkdv_far(do, q, k, v, lse, delta, layout, window, scale, dk, dv, c))
    dq, delta = launch_dq(do, q, k, v, out, lse, layout, window, scale, cfg_dq)
    dk, dv = launch_dkdv_band(do, q, k, v, lse, delta, layout, window, scale, cfg_band)
    launch_dkdv_far(do, q, k, v, lse, delta, layout, window, scale, dk, dv, cfg_far)
    return dq, dk, dv


class SepAttentionFunction(torch.autograd.Function):
    """Eager autograd path: far less Python per call than a custom op (which matters at 2k tokens).

    The layout rides along as a plain object: its tensors need no gradient and no version
    checks, and unpacking six optional tensors per call is host time at 2k tokens.
    """

    @staticmethod
    def forward(ctx, q, k, v, layout, window, scale, recompile):
        out, lse = forward(q, k, v, layout, window, scale, recompile)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.layout, ctx.window, ctx.scale, ctx.recompile = layout, window, scale, recompile
        return out

    @staticmethod
    def backward(ctx, d_out):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = backward(d_out, q, k, v, out, lse, ctx.layout, ctx.window, ctx.scale, ctx.recompile)
        return dq, dk, dv, None, None, None, None


# The same computation as torch.library custom ops, for torch.compile: opaque calls with fixed
# output shapes, so a new batch changes no shape and no guard, and nothing can fall back to an
# unfused path. Eager mode uses SepAttentionFunction (less dispatch overhead).
@torch.library.custom_op("sepllm::sep_attention_fwd", mutates_args=())
def sep_attention_fwd(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
    kept_pos: torch.Tensor, kept_count: torch.Tensor,
    doc: Optional[torch.Tensor], doc_start: Optional[torch.Tensor], doc_end: Optional[torch.Tensor],
    valid: Optional[torch.Tensor], window: int, scale: float, recompile: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    return forward(q, k, v, SepLayout(kept_pos, kept_count, doc, doc_start, doc_end, valid), window, scale, recompile)


@sep_attention_fwd.register_fake
def _(q, k, v, kept_pos, kept_count, doc, doc_start, doc_end, valid, window, scale, recompile):
    B, H, L, _ = q.shape
    return torch.empty_like(q), q.new_empty((B, H, L), dtype=torch.float32)


@torch.library.custom_op("sepllm::sep_attention_bwd", mutates_args=())
def sep_attention_bwd(
    do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
    kept_pos: torch.Tensor, kept_count: torch.Tensor,
    doc: Optional[torch.Tensor], doc_start: Optional[torch.Tensor], doc_end: Optional[torch.Tensor],
    valid: Optional[torch.Tensor], window: int, scale: float, recompile: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    layout = SepLayout(kept_pos, kept_count, doc, doc_start, doc_end, valid)
    return backward(do, q, k, v, out, lse, layout, window, scale, recompile)


@sep_attention_bwd.register_fake
def _(do, q, k, v, out, lse, kept_pos, kept_count, doc, doc_start, doc_end, valid, window, scale, recompile):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup_context(ctx, inputs, output):
    q, k, v, kept_pos, kept_count, doc, doc_start, doc_end, valid, window, scale, recompile = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, kept_pos, kept_count, doc, doc_start, doc_end, valid)
    ctx.window, ctx.scale, ctx.recompile = window, scale, recompile


def _op_backward(ctx, d_out, d_lse):
    q, k, v, out, lse, *meta = ctx.saved_tensors
    dq, dk, dv = torch.ops.sepllm.sep_attention_bwd(d_out, q, k, v, out, lse, *meta, ctx.window, ctx.scale, ctx.recompile)
    return dq, dk, dv, None, None, None, None, None, None, None, None, None


sep_attention_fwd.register_autograd(_op_backward, setup_context=_setup_context)


def sep_attention(q, k, v, layout: SepLayout, window: int, scale: float, recompile: bool) -> torch.Tensor:
    """Differentiable Sep-Attention output: the custom op under torch.compile, the Function in eager."""
    if torch.compiler.is_compiling():
        return torch.ops.sepllm.sep_attention_fwd(
            q, k, v, layout.kept_pos, layout.kept_count, layout.doc, layout.doc_start, layout.doc_end, layout.valid,
            window, scale, recompile)[0]
    return SepAttentionFunction.apply(q, k, v, layout, window, scale, recompile)


def default_scale(head_dim: int) -> float:
    return 1.0 / math.sqrt(head_dim)
