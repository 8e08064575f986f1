"""Fast Sep-Attention for training and prefill (USE_SEP_ATTN_KERNEL_ACCELERATOR).

Exact SepLLM attention without any L x L tensor. Query i sees the kept keys (initial tokens and
separators, or FixLLM anchors) beyond its window, plus the window itself. Separators are spread
through the text (~17% of PG19 tokens with the GPT-NeoX-20B tokenizer), so every key block of
the original layout holds some and block sparsity over it is worthless. The kernels instead
walk, for each query block, (1) the compact list of kept key positions, gathering K/V rows in
place (a dense, causal-like prefix: all but the last block need no mask), then (2) the window
band in the original layout. Both parts are folded into one online softmax; the backward uses
the same two parts (dQ per query block; dK/dV per key block for the band, then per compact
block for the far part). Extra memory is the O(B x L) metadata of layout.py plus the softmax
statistics, as for any flash attention.

Flags (SepLLMArgs):
  * USE_SEP_ATTN_KERNEL_ACCELERATOR: on CUDA the model resolves each SepLLM layer's inputs
    (`layer_kernel`, through ForwardContext.for_layer) and calls `sep_attention_layer`; off, or on
    CPU, the masked-SDPA reference path runs. `sep_attention_kernel` does both for one plan and layer.
  * RECOMPILE_SEP_ATTN_KERNEL (`recompile=True` here): on the first call of each exact shape
    (batch, heads, length, head dim, dtype, window) the block sizes are tuned on the real inputs
    and the kernels are compiled for the winner. Off: one fixed config per head dim, compiled
    once per process; separator counts never reach a compile key, so no batch recompiles.

Limits (each raises a clear error, never a silent fallback): CUDA tensors (or TRITON_INTERPRET=1
for CPU tests), fp16/bf16/fp32, head dim <= 128, no attention dropout, doc ids one contiguous
run per document.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from megatron.sepllm.kernel.configs import MAX_HEAD_DIM
from megatron.sepllm.kernel.layout import SepLayout, build_layout, plan_layout
from megatron.sepllm.kernel.ops import compiled_kernel_count, default_scale, interpreted, sep_attention
from megatron.sepllm.mask import AttentionPlan

__all__ = ["sep_attention_kernel", "sep_attention_layer", "LayerKernel", "layer_kernel", "effective_window", "SepLayout",
           "build_layout", "plan_layout", "compiled_kernel_count"]


def effective_window(plan: AttentionPlan, layer: int, length: int) -> int:
    """W such that key j is in query i's window iff 0 <= i - j < W (capped at length + 1)."""
    window = plan.windows[layer]
    if window is None:
        return length + 1
    w = int(window) if plan.exclude_diagonal else int(window) + 1
    if w < 1:
        raise ValueError(
            f"layer {layer}: a local window of {window} with EXCLUDE_DIAGONAL hides each query from itself; "
            "use prefill_local_window_size >= 1"
        )
    return min(w, length + 1)


@dataclass(frozen=True)
class LayerKernel:
    """One layer's kernel inputs, resolved from the plan before the layer runs.

    Compiled blocks read this instead of the plan and their layer index, so that blocks with the
    same window share one graph with the kernel call inside it (megatron/parallel/compile.py).
    """

    layout: SepLayout
    window: int  # effective_window of the layer


def layer_kernel(plan: AttentionPlan, layer: int, device: torch.device) -> LayerKernel:
    """The kernel inputs of `layer` under `plan` (the layout is built once per plan and shared)."""
    with torch.no_grad():
        layout = plan_layout(plan, layer, device)
    return LayerKernel(layout, effective_window(plan, layer, plan._length()))


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: SepLayout, dropout_p: float) -> None:
    if dropout_p > 0.0:
        raise ValueError(
            f"the Sep-Attention kernel has no attention dropout (got dropout_p={dropout_p}); set attention-dropout "
            "to 0, as the SepLLM configs do, or USE_SEP_ATTN_KERNEL_ACCELERATOR: false for the masked path"
        )
    if q.dim() != 4 or k.dim() != 4 or v.shape != k.shape:
        raise ValueError(f"expected q [B,H,L,D] and k, v [B,Hkv,L,D]; got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    B, H, L, D = q.shape
    if k.shape[0] != B or k.shape[2] != L or k.shape[3] != D or H % k.shape[1] != 0:
        raise ValueError(f"k/v shape {tuple(k.shape)} does not match q {tuple(q.shape)} (heads must divide evenly)")
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"q, k, v must share one of float16/bfloat16/float32; got {q.dtype}, {k.dtype}, {v.dtype}")
    if D > MAX_HEAD_DIM:
        raise ValueError(
            f"head dim {D} is above {MAX_HEAD_DIM}, which the Sep-Attention kernel does not support; "
            "use USE_SEP_ATTN_KERNEL_ACCELERATOR: false"
        )
    if tuple(layout.kept_pos.shape) != (B, L):
        raise ValueError(f"the attention plan is for batch x length {tuple(layout.kept_pos.shape)}, the inputs are {(B, L)}")
    if not q.is_cuda and not interpreted():
        raise ValueError(
            "the Sep-Attention kernel runs on CUDA tensors (on CPU, set TRITON_INTERPRET=1 before importing "
            "megatron.sepllm.kernel, for tests only); use USE_SEP_ATTN_KERNEL_ACCELERATOR: false on CPU"
        )


def sep_attention_layer(
    q: torch.Tensor,  # [B, H, L, D]
    k: torch.Tensor,  # [B, Hkv, L, D]
    v: torch.Tensor,  # [B, Hkv, L, D]
    spec: LayerKernel,
    *,
    dropout_p: float = 0.0,
    scale: Optional[float] = None,
    recompile: bool = False,
) -> torch.Tensor:  # [B, H, L, D]
    """Exact SepLLM attention of the layer `spec` was resolved for; differentiable in q, k, v."""
    _check(q, k, v, spec.layout, dropout_p)
    D = q.shape[3]
    return sep_attention(q, k, v, spec.layout, spec.window, float(scale if scale is not None else default_scale(D)),
                         bool(recompile))


def sep_attention_kernel(
    q: torch.Tensor,  # [B, H, L, D]
    k: torch.Tensor,  # [B, Hkv, L, D]
    v: torch.Tensor,  # [B, Hkv, L, D]
    plan: AttentionPlan,
    layer: int,
    *,
    dropout_p: float = 0.0,
    scale: Optional[float] = None,
    recompile: bool = False,
) -> torch.Tensor:  # [B, H, L, D]
    """Exact SepLLM attention of `layer` under `plan`, differentiable in q, k, v."""
    spec = layer_kernel(plan, layer, q.device)
    return sep_attention_layer(q, k, v, spec, dropout_p=dropout_p, scale=scale, recompile=recompile)
