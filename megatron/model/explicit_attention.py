"""Attention with the score matrix written out, for what fused kernels cannot do.

Two features need the scores themselves: an additive ALiBi bias and Self-Adjust Softmax
(arXiv 2502.18277). Self-Adjust Softmax rescales each softmax weight by its own score, as upstream
Training-SepLLM computes it (in its non-kernel path):

  USE_SA_SOFTMAX:          p_ij = softmax_ij * (s_ij - lo_i + SA_Numerator_Bias) / (hi_i - lo_i)
  USE_SA_SOFTMAX_NO_DENO:  p_ij = softmax_ij * s_ij

where s are the scaled (and ALiBi-biased) scores and, over the causal row of query i with the keys
after it counted as 0 (upstream takes them from tril(s)),
  lo_i = min(0, min_j s_ij),   hi_i = max(0, max_j s_ij + b) + b,   b = SA_Denominator_Bias
(b is added twice, as upstream does). Keys hidden by the SepLLM mask still count in lo and hi,
again as upstream, but their weight stays 0.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

SA_SOFTMAX = "sa"
SA_SOFTMAX_NO_DENO = "sa_no_deno"


def self_adjust_variant(sep) -> Optional[str]:
    """The Self-Adjust Softmax variant a SepLLMArgs asks for; like upstream, none under full attention."""
    if sep.USE_ORIGINAL_FULL_ATTEN:
        return None
    if sep.USE_SA_SOFTMAX:
        return SA_SOFTMAX
    if sep.USE_SA_SOFTMAX_NO_DENO:
        return SA_SOFTMAX_NO_DENO
    return None


def self_adjust(
    probs: torch.Tensor,
    scores: torch.Tensor,
    causal: torch.Tensor,
    variant: str,
    numerator_bias: float,
    denominator_bias: float,
) -> torch.Tensor:
    """Apply Self-Adjust Softmax to softmax weights `probs` of `scores` (both [B, H, Lq, Lk])."""
    if variant == SA_SOFTMAX_NO_DENO:
        return probs * scores * causal
    if variant != SA_SOFTMAX:
        raise ValueError(f"unknown Self-Adjust Softmax variant {variant!r}")
    row = scores.masked_fill(~causal, 0.0)
    lo = row.amin(-1, keepdim=True).clamp(max=0.0)
    hi = (row.amax(-1, keepdim=True) + denominator_bias).clamp(min=0.0) + denominator_bias
    return probs * (scores - lo + numerator_bias) / (hi - lo) * causal


def explicit_attention(
    q: torch.Tensor,  # [B, H, L, D]
    k: torch.Tensor,  # [B, Hkv, L, D]
    v: torch.Tensor,  # [B, Hkv, L, D]
    mask: Optional[torch.Tensor],  # [B, 1, L, L] bool, True = attend; None = plain causal
    *,
    bias: Optional[torch.Tensor] = None,  # [B or 1, H, L, L], added to the scaled scores
    sa_variant: Optional[str] = None,
    numerator_bias: float = 0.0,
    denominator_bias: float = 1e-10,
    dropout_p: float = 0.0,
    scale: Optional[float] = None,
) -> torch.Tensor:  # [B, H, L, D]
    """Softmax attention computed in fp32 from the explicit score matrix."""
    B, H, L, D = q.shape
    groups = H // k.shape[1]
    if groups > 1:
        k = k.repeat_interleave(groups, dim=1)
        v = v.repeat_interleave(groups, dim=1)
    scale = D**-0.5 if scale is None else scale
    scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale
    if bias is not None:
        scores = scores + bias
    causal = torch.ones(L, L, dtype=torch.bool, device=q.device).tril()
    visible = causal if mask is None else mask
    probs = torch.softmax(scores.masked_fill(~visible, float("-inf")), dim=-1)
    if sa_variant is not None:
        probs = self_adjust(probs, scores, causal, sa_variant, numerator_bias, denominator_bias)
    if dropout_p > 0.0:
        probs = F.dropout(probs, p=dropout_p)
    return torch.matmul(probs, v.float()).to(q.dtype)
