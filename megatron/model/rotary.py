"""Rotary position embedding (RoPE) as GPT-NeoX and HF compute it.

The first `rotary_dims` dimensions of every head are rotated (partial rotary, `rotary_pct`), in the
"rotate half" layout: dimension d pairs with d + rotary_dims / 2.
"""
from __future__ import annotations

import torch


def rotary_cos_sin(positions: torch.Tensor, rotary_dims: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin, each [B, 1, L, rotary_dims] in fp32, for integer positions [B, L]."""
    exponents = torch.arange(0, rotary_dims, 2, dtype=torch.float32, device=positions.device) / rotary_dims
    inv_freq = 1.0 / (float(base) ** exponents)
    freqs = positions[..., None].float() * inv_freq
    angles = torch.cat((freqs, freqs), dim=-1)[:, None]
    return angles.cos(), angles.sin()


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first cos.shape[-1] dims of x [B, H, L, D]; the rest pass through."""
    dims = cos.shape[-1]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    rot, rest = x[..., :dims], x[..., dims:]
    rot = rot * cos + _rotate_half(rot) * sin
    return torch.cat((rot, rest), dim=-1) if rest.shape[-1] else rot
