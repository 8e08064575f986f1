"""Megatron sequence parallelism for our [batch, seq, hidden] activations.

Outside attention and the MLP (norms, dropout, residual adds) each tensor-parallel rank keeps only
its 1/tp slice of the sequence, so those activations take 1/tp of the memory:

    embedding -> scatter(seq) -> [norm -> gather(seq) -> column-parallel ... row-parallel -> reduce-scatter(seq)] x N
              -> final norm -> gather(seq) -> vocab-parallel output layer

megatron-core implements the same collectives for [seq, batch, hidden] tensors with CUDA-only buffers;
these autograd functions split dimension 1 and allocate on the input's device, so they also run on
gloo. Parameters that stay whole on every rank but only see part of the sequence (norm weights,
row-parallel biases) get partial gradients; `sum_replicated_grads` adds them up over the group.
"""
from __future__ import annotations

from functools import partial
from typing import Iterable

import torch
import torch.distributed as dist

SEQ_DIM = 1


def _gather(x: torch.Tensor, group) -> torch.Tensor:
    size = dist.get_world_size(group)
    if size == 1:
        return x
    local = x.movedim(SEQ_DIM, 0).contiguous()
    out = torch.empty((local.shape[0] * size, *local.shape[1:]), dtype=x.dtype, device=x.device)
    dist.all_gather_into_tensor(out, local, group=group)
    return out.movedim(0, SEQ_DIM).contiguous()


def _reduce_scatter(x: torch.Tensor, group) -> torch.Tensor:
    size = dist.get_world_size(group)
    if size == 1:
        return x
    full = x.movedim(SEQ_DIM, 0).contiguous()
    if full.shape[0] % size:
        raise ValueError(f"sequence length {full.shape[0]} is not divisible by the {size} sequence-parallel ranks")
    out = torch.empty((full.shape[0] // size, *full.shape[1:]), dtype=x.dtype, device=x.device)
    dist.reduce_scatter_tensor(out, full, group=group)
    return out.movedim(0, SEQ_DIM).contiguous()


def _split(x: torch.Tensor, group) -> torch.Tensor:
    size = dist.get_world_size(group)
    if size == 1:
        return x
    if x.shape[SEQ_DIM] % size:
        raise ValueError(f"sequence length {x.shape[SEQ_DIM]} is not divisible by the {size} sequence-parallel ranks")
    return x.chunk(size, dim=SEQ_DIM)[dist.get_rank(group)].contiguous()


class _SequenceComm(torch.autograd.Function):
    """One collective in forward, its adjoint in backward:
    split      <-> all-gather     (keep this rank's slice of the sequence);
    all-gather <-> reduce-scatter (every rank's column-parallel layer contributed a partial input
                                   gradient for the whole sequence);
    reduce-scatter <-> all-gather (sum row-parallel partial outputs, keep this rank's slice)."""

    @staticmethod
    def forward(ctx, x, group, forward_op, backward_op):
        ctx.group, ctx.backward_op = group, backward_op
        return forward_op(x, group)

    @staticmethod
    def backward(ctx, grad):
        return ctx.backward_op(grad, ctx.group), None, None, None


def scatter_to_sequence(x: torch.Tensor, group) -> torch.Tensor:
    return _SequenceComm.apply(x, group, _split, _gather)


def gather_from_sequence(x: torch.Tensor, group) -> torch.Tensor:
    return _SequenceComm.apply(x, group, _gather, _reduce_scatter)


def reduce_scatter_to_sequence(x: torch.Tensor, group) -> torch.Tensor:
    return _SequenceComm.apply(x, group, _reduce_scatter, _gather)


def _gather_input_hook(group, module, args):
    return (gather_from_sequence(args[0], group), *args[1:])


def _scatter_output_hook(group, module, args, output):
    return scatter_to_sequence(output, group)


def gather_input_of(module: torch.nn.Module, group) -> None:
    """Make `module` receive the whole sequence (its first argument is all-gathered)."""
    module.register_forward_pre_hook(partial(_gather_input_hook, group))


def scatter_output_of(module: torch.nn.Module, group) -> None:
    """Make `module` return only this rank's slice of the sequence."""
    module.register_forward_hook(partial(_scatter_output_hook, group))


def _sum_over_group(group, grad: torch.Tensor) -> torch.Tensor:
    grad = grad.clone()
    dist.all_reduce(grad, group=group)
    return grad


def sum_replicated_grads(params: Iterable[torch.nn.Parameter], group) -> None:
    """Sum the gradients of whole-on-every-rank parameters over the group as they are computed.

    A tensor hook runs before the gradient is accumulated, so DeepSpeed (any ZeRO stage) only ever
    sees the full gradient. Every rank of the group runs the same graph, so the all-reduces line up.
    """
    for p in params:
        p.register_hook(partial(_sum_over_group, group))
