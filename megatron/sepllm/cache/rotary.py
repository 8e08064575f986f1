"""Rotating cached keys to new positions (position shifting).

Rotary embeddings compose: rotating a key already rotated to position p by a further angle for
delta gives the key at position p + delta. Moving cached keys to their positions inside the
cache is therefore one rotation by (new - old) per key, whichever RoPE variant produced the
frequencies (default, linear or llama3 scaling). Both Llama- and GPT-NeoX-style models rotate
the first `rotary_dim` channels of each head with the rotate-half layout, which is what
`rotate_by` assumes.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class RotarySpec:
    """Frequencies of a model's rotary embedding; rotary_dim = 2 * len(inv_freq)."""

    inv_freq: torch.Tensor  # [rotary_dim / 2], float32

    @property
    def rotary_dim(self) -> int:
        return 2 * self.inv_freq.numel()

    @classmethod
    def from_base(cls, head_dim: int, base: float, partial_rotary_factor: float = 1.0) -> "RotarySpec":
        """Default RoPE frequencies (base ** (-2i/d)) over the first head_dim * partial_rotary_factor channels."""
        dim = int(head_dim * partial_rotary_factor)
        if dim <= 0 or dim % 2:
            raise ValueError(f"rotary dimension {dim} (head_dim {head_dim} x partial_rotary_factor {partial_rotary_factor}) must be a positive even number")
        inv = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
        return cls(inv)


def rotate_by(x: torch.Tensor, delta: torch.Tensor, spec: RotarySpec) -> torch.Tensor:
    """Rotate x [B, H, N, D] by delta [B, N] positions (at least in float32; returned in x's dtype)."""
    rd = spec.rotary_dim
    if rd > x.shape[-1]:
        raise ValueError(f"rotary dimension {rd} exceeds the head dimension {x.shape[-1]}")
    work = torch.promote_types(x.dtype, torch.float32)  # half-precision keys are rotated in fp32
    angles = delta.to(work)[:, None, :, None] * spec.inv_freq.to(device=x.device, dtype=work)[None, None, None, :]
    cos = torch.cos(angles)
    sin = torch.sin(angles)
    rot = x[..., :rd].to(work)
    half = rd // 2
    x1, x2 = rot[..., :half], rot[..., half:]
    out = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).to(x.dtype)
    if rd == x.shape[-1]:
        return out
    return torch.cat((out, x[..., rd:]), dim=-1)
