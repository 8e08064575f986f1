"""Megatron sequence parallelism for our [batch, seq, hidden] activations.

Outside attention and the MLP (norms, dropout, residual adds) each tensor-parallel rank keeps only
1/tp of the tokens, so those activations take 1/tp of the memory:

    embedding -> scatter -> [norm -> gather -> column-parallel ... row-parallel -> reduce-scatter] x N
              -> final norm -> gather -> vocab-parallel output layer

What a rank keeps is a contiguous 1/tp chunk of the [batch x seq] tokens in memory order, viewed as
[batch, seq/tp, hidden]; for batch > 1 that is not each sequence's slice, and it need not be: the work
between a scatter and the next gather is token-wise. Chunking memory order makes every collective a
plain all-gather or reduce-scatter over contiguous buffers; splitting dimension 1 instead needs a
transposed copy of the whole activation before and after each collective (Megatron avoids that with
[seq, batch, hidden] activations), which measured slower than no sequence parallelism at all.
Parameters that stay whole on every rank but see only part of the tokens (norm weights, row-parallel
biases) get partial gradients; `sum_replicated_grads` adds them up over the group.

The same one-collective-and-its-adjoint autograd function also gives the two plain tensor-parallel
regions that fused blocks (tensor_parallel.FusedBranchesBlock) enter and leave without sequence
parallelism: `copy_to_group` and `reduce_over_group`.
"""
from __future__ import annotations

from functools import partial
from typing import Iterable

import torch
import torch.distributed as dist


def _local_shape(full: torch.Size, size: int) -> tuple[int, ...]:
    if len(full) < 2 or full[1] % size:
        raise ValueError(f"sequence length {full[1] if len(full) > 1 else '?'} (activation shape {tuple(full)}) is "
                         f"not divisible by the {size} sequence-parallel ranks")
    return (full[0], full[1] // size, *full[2:])


# The collectives are torch's functional (out-of-place) ones, which torch.compile traces as they
# are. The in-place torch.distributed calls, traced inside a custom autograd Function's backward,
# gave wrong gradients on CUDA (the reduced result was dropped; measured on an H100, torch 2.11),
# while the same graphs on CPU were right.
_ops = torch.ops._c10d_functional


def _gather(x: torch.Tensor, group) -> torch.Tensor:
    size = dist.get_world_size(group)
    if size == 1:
        return x
    out = _ops.wait_tensor(_ops.all_gather_into_tensor(x.contiguous().view(-1), size, group.group_name))
    return out.view(x.shape[0], x.shape[1] * size, *x.shape[2:])  # flat, so a rank's chunk stays contiguous


def _reduce_scatter(x: torch.Tensor, group) -> torch.Tensor:
    size = dist.get_world_size(group)
    if size == 1:
        return x
    local = _local_shape(x.shape, size)
    return _ops.wait_tensor(_ops.reduce_scatter_tensor(x.contiguous().view(-1), "sum", size, group.group_name)).view(local)


def all_reduce(x: torch.Tensor, group, op: str = "sum") -> torch.Tensor:
    """A new tensor: x reduced over the group (`op` "sum" or "max"); not differentiable."""
    if dist.get_world_size(group) == 1:
        return x
    return _ops.wait_tensor(_ops.all_reduce(x.contiguous(), op, group.group_name))


def _split(x: torch.Tensor, group) -> torch.Tensor:
    size = dist.get_world_size(group)
    if size == 1:
        return x
    local = _local_shape(x.shape, size)
    return x.contiguous().view(size, -1)[dist.get_rank(group)].view(local).clone()


def _identity(x: torch.Tensor, group) -> torch.Tensor:
    # A view, not x itself: torch.compile refuses a custom Function that returns its input as-is.
    return x.view_as(x)


class _GroupComm(torch.autograd.Function):
    """One collective in forward, its adjoint in backward:
    split      <-> all-gather     (keep this rank's slice of the sequence);
    all-gather <-> reduce-scatter (every rank's column-parallel layer contributed a partial input
                                   gradient for the whole sequence);
    reduce-scatter <-> all-gather (sum row-parallel partial outputs, keep this rank's slice);
    identity   <-> all-reduce     (the whole input to every rank; partial gradients summed)."""

    @staticmethod
    def forward(ctx, x, group, forward_op, backward_op):
        ctx.group, ctx.backward_op = group, backward_op
        return forward_op(x, group)

    @staticmethod
    def backward(ctx, grad):
        return ctx.backward_op(grad, ctx.group), None, None, None


def scatter_to_sequence(x: torch.Tensor, group) -> torch.Tensor:
    return _GroupComm.apply(x, group, _split, _gather)


def gather_from_sequence(x: torch.Tensor, group) -> torch.Tensor:
    return _GroupComm.apply(x, group, _gather, _reduce_scatter)


def reduce_scatter_to_sequence(x: torch.Tensor, group) -> torch.Tensor:
    return _GroupComm.apply(x, group, _reduce_scatter, _gather)


def copy_to_group(x: torch.Tensor, group) -> torch.Tensor:
    """x on every rank as it is; in backward the ranks' partial gradients of it are summed."""
    return _GroupComm.apply(x, group, _identity, all_reduce)


def reduce_over_group(x: torch.Tensor, group) -> torch.Tensor:
    """The sum of the ranks' partial x (row-parallel products); its gradient is the same on every rank."""
    return _GroupComm.apply(x, group, all_reduce, _identity)


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


def sum_replicated_grads(params: Iterable[torch.nn.Parameter], group) -> None:
    """Sum the gradients of whole-on-every-rank parameters over the group as they are computed.

    A tensor hook runs before the gradient is accumulated, so DeepSpeed (any ZeRO stage) only ever
    sees the full gradient. Every rank of the group runs the same graph, so the all-reduces line up.
    """
    for p in params:
        p.register_hook(partial(all_reduce, group=group))
