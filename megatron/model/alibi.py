"""ALiBi: a per-head linear penalty on the distance between query and key (arXiv 2108.12409)."""
from __future__ import annotations

import math

import torch


def alibi_slopes(num_heads: int) -> list[float]:
    """The geometric slopes of ALiBi; for a head count that is not a power of 2, GPT-NeoX's interleaving."""

    def power_of_2(n: int) -> list[float]:
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]

    if math.log2(num_heads).is_integer():
        return power_of_2(num_heads)
    closest = 2 ** math.floor(math.log2(num_heads))
    return power_of_2(closest) + alibi_slopes(2 * closest)[0::2][: num_heads - closest]


def alibi_bias(positions: torch.Tensor, slopes: torch.Tensor) -> torch.Tensor:
    """[B, H, L, L] fp32 bias -slope_h * (pos_i - pos_j) for keys at or before the query, 0 after it.

    With BiPE the positions are segment indices, so the penalty counts segments, not tokens.
    """
    distance = (positions[:, :, None] - positions[:, None, :]).clamp(min=0).float()
    return -slopes.float()[None, :, None, None] * distance[:, None]
