"""The language-model loss, over the whole vocabulary or over this rank's vocabulary slice."""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from megatron.parallel.sequence_parallel import all_reduce, reduce_over_group


def _masked_mean(losses: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    mask = loss_mask.reshape(losses.shape).float()
    return (losses * mask).sum() / mask.sum().clamp(min=1.0)


def lm_loss(logits: torch.Tensor, labels: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over the tokens whose loss_mask is 1."""
    losses = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), reduction="none")
    return _masked_mean(losses, loss_mask)


def vocab_parallel_lm_loss(logits: torch.Tensor, labels: torch.Tensor, loss_mask: torch.Tensor, group=None) -> torch.Tensor:
    """lm_loss with logits [B, L, V / tp] split over the tensor-parallel ranks (`group`; default
    megatron-core's): no rank ever holds the whole vocabulary's logits.

    Written with plain differentiable ops around three collectives (a max of detached values and
    two sums, whose gradient is the same on every rank), so that torch.compile fuses it into a few
    passes over the logits. megatron-core's vocab_parallel_cross_entropy is an autograd Function
    working in place on an fp32 copy (about eight passes over [tokens x V/tp] fp32 in forward and
    backward), and under torch.compile it returns wrong losses (torch 2.13).
    """
    if group is None:
        from megatron.core import parallel_state

        group = parallel_state.get_tensor_model_parallel_group()
    logits = logits.float()
    width = logits.shape[-1]
    # Any shift gives the same loss and gradient; the max keeps exp finite.
    shift = all_reduce(logits.detach().amax(dim=-1), group, op="max")
    shifted = logits - shift.unsqueeze(-1)
    sum_exp = reduce_over_group(shifted.exp().sum(dim=-1), group)
    local = labels - dist.get_rank(group) * width
    here = (local >= 0) & (local < width)
    picked = shifted.gather(-1, local.clamp(0, width - 1).unsqueeze(-1)).squeeze(-1)
    picked = reduce_over_group(torch.where(here, picked, torch.zeros_like(picked)), group)
    return _masked_mean(sum_exp.log() - picked, loss_mask)
