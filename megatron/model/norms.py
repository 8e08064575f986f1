"""LayerNorm and RMSNorm.

RMSNorm follows Llama (x * rsqrt(mean(x^2) + eps), in fp32, then scaled by the weight), so Llama
checkpoints reproduce exactly. GPT-NeoX's own RMSNorm adds eps to the RMS instead
(x / (rms + eps)); the two differ by O(eps) and we keep only the Llama form.
"""
from __future__ import annotations

import torch
from torch import nn

from megatron.neox_arguments.model import ModelArgs


class RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float, device=None, dtype=None) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size, device=device, dtype=dtype))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


def build_norm(args: ModelArgs, hidden_size: int, device=None, dtype=None) -> nn.Module:
    """The norm ModelArgs asks for (LayerNorm with or without bias, or RMSNorm)."""
    if args.norm == "rmsnorm":
        return RMSNorm(hidden_size, float(args.rms_norm_epsilon), device=device, dtype=dtype)
    return nn.LayerNorm(
        hidden_size, eps=float(args.layernorm_epsilon), bias=bool(args.use_bias_in_norms), device=device, dtype=dtype
    )
