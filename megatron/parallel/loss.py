"""The language-model loss, over the whole vocabulary or over this rank's vocabulary slice."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _masked_mean(losses: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    mask = loss_mask.reshape(losses.shape).float()
    return (losses * mask).sum() / mask.sum().clamp(min=1.0)


def lm_loss(logits: torch.Tensor, labels: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over the tokens whose loss_mask is 1."""
    losses = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), reduction="none")
    return _masked_mean(losses, loss_mask)


def vocab_parallel_lm_loss(logits: torch.Tensor, labels: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """lm_loss with logits [B, L, V / tp] split over the tensor-parallel ranks (megatron-core's
    vocab-parallel cross-entropy: no rank ever holds the whole vocabulary's logits)."""
    from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

    # The kernel works in place on its input; .float() copies bf16 logits, and fp32 logits are an
    # intermediate nobody reads again.
    return _masked_mean(vocab_parallel_cross_entropy(logits.float(), labels), loss_mask)
