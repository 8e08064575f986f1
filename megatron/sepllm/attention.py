"""SepLLM attention for training and prefill: the one entry point the model's layers call.

`sepllm_attention` picks the path:
  * a layer with full causal attention (mode full, or a window covering the sequence, and no
    document or padding masks) runs SDPA with is_causal (`causal_attention`; `sdpa_backends`
    from `causal_backends` puts cuDNN's kernel first on Hopper and later GPUs);
  * otherwise masked SDPA with the plan's dense mask (the reference path, used on CPU).
The fast Sep-Attention kernel (megatron.sepllm.kernel) is not reached through here: the model
resolves its inputs once per layer outside compiled code (ForwardContext.for_layer) and calls
`sep_attention_layer` directly, so that a compiled block traces it as one graph.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from megatron.sepllm.mask import AttentionPlan


def sepllm_attention(
    q: torch.Tensor,  # [B, H, L, D]
    k: torch.Tensor,  # [B, Hkv, L, D]
    v: torch.Tensor,  # [B, Hkv, L, D]
    plan: Optional[AttentionPlan],
    layer: int,
    *,
    dropout_p: float = 0.0,
    scale: Optional[float] = None,
    sdpa_backends: Optional[tuple[SDPBackend, ...]] = None,
) -> torch.Tensor:  # [B, H, L, D]
    gqa = q.shape[1] != k.shape[1]
    if plan is None or plan.is_causal(layer):
        return causal_attention(q, k, v, dropout_p=dropout_p, scale=scale, backends=sdpa_backends)
    mask = plan.dense_mask(layer)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=scale, enable_gqa=gqa)


# torch puts cuDNN's attention last (after its own math kernel, so never chosen) since cuDNN 9.1's
# bugs in torch 2.5. With the cuDNN that torch 2.11 ships it is 1.5-1.8x faster than FlashAttention-2
# for causal training on an H100 (benchmarks/RESULTS.md), and it is what our benchmarks compare with.
# Inputs it cannot take (e.g. dropout, some head dims) fall through to the next enabled backend.
_CAUSAL_ORDER = (
    (SDPBackend.CUDNN_ATTENTION, torch.backends.cuda.cudnn_sdp_enabled),
    (SDPBackend.FLASH_ATTENTION, torch.backends.cuda.flash_sdp_enabled),
    (SDPBackend.EFFICIENT_ATTENTION, torch.backends.cuda.mem_efficient_sdp_enabled),
    (SDPBackend.MATH, torch.backends.cuda.math_sdp_enabled),
)


def causal_backends(device: torch.device) -> Optional[tuple[SDPBackend, ...]]:
    """SDPA backends for causal attention on `device`, in priority order, or None for torch's own choice.

    cuDNN first on CUDA GPUs of compute capability 9 and later, unless the caller switched it off
    (an outer `sdpa_kernel` pin is kept: only the backends it left enabled are listed). Called
    outside compiled code (torch.compile cannot trace the enablement getters), once per forward.
    """
    if device.type != "cuda" or not torch.backends.cuda.cudnn_sdp_enabled():
        return None
    if torch.cuda.get_device_capability(device)[0] < 9:
        return None
    return tuple(backend for backend, enabled in _CAUSAL_ORDER if enabled())


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, dropout_p: float = 0.0,
                     scale: Optional[float] = None, backends: Optional[tuple[SDPBackend, ...]] = None) -> torch.Tensor:
    """Full causal SDPA over [B, H, L, D] queries and [B, Hkv, L, D] keys and values, trying
    `backends` (from causal_backends) in order; under torch.compile the choice is made when the
    graph is traced."""
    gqa = q.shape[1] != k.shape[1]
    if backends is None:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True, scale=scale, enable_gqa=gqa)
    with sdpa_kernel(list(backends), set_priority=True):
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True, scale=scale, enable_gqa=gqa)
