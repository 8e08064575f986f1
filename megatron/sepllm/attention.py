"""SepLLM attention for training and prefill: the one entry point the model's layers call.

`sepllm_attention` picks the path:
  * a layer with full causal attention (mode full, or a window covering the sequence, and no
    document or padding masks) runs SDPA with is_causal, so the fastest fused kernel applies;
  * otherwise, with `use_kernel` on CUDA, the fast Sep-Attention kernel (megatron.sepllm.kernel);
  * otherwise masked SDPA with the plan's dense mask (the reference path, used on CPU).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

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
    use_kernel: bool = False,
    recompile: bool = False,
) -> torch.Tensor:  # [B, H, L, D]
    gqa = q.shape[1] != k.shape[1]
    if plan is None or plan.is_causal(layer):
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True, scale=scale, enable_gqa=gqa)
    if use_kernel and q.is_cuda:
        from megatron.sepllm.kernel import sep_attention_kernel

        return sep_attention_kernel(q, k, v, plan, layer, dropout_p=dropout_p, scale=scale, recompile=recompile)
    mask = plan.dense_mask(layer)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=scale, enable_gqa=gqa)
