"""Tensor parallelism: swap a built GPTModel's layers for megatron-core's tensor-parallel layers.

The model is built and initialised whole (so any layout starts from the weights a single process
would have), then each rank keeps its slice:

    query_key_value, dense_h_to_4h, dense_h_to_4h_gate   ColumnParallelLinear  (output rows split)
    attention.dense, dense_4h_to_h                        RowParallelLinear     (input columns split)
    embedding.word_embeddings                             VocabParallelEmbedding (vocabulary rows split)
    output_layer                                          ColumnParallelLinear over the vocabulary,
                                                          reading the embedding slice when tied
    norms, biases of row-parallel layers, position table  whole on every rank

The fused QKV rows are grouped per key/value head ([q of group | k | v], see model/attention.py), so
contiguous row chunks give every rank whole groups: its own query heads with their key/value heads,
and SepLLM masks (per head, identical for all heads) apply to the shard unchanged.
`split_dim` is the one table of which dimension each parameter is split on; resharding uses it too.
"""
from __future__ import annotations

import re
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from megatron.parallel import sequence_parallel as sp

# Parameter name endings -> the dimension split over tensor-parallel ranks. Others are whole on every rank.
_SPLIT_RULES = (
    (re.compile(r"(^|\.)word_embeddings\.weight$"), 0),
    (re.compile(r"(^|\.)output_layer\.weight$"), 0),
    (re.compile(r"\.query_key_value\.(weight|bias)$"), 0),
    (re.compile(r"\.dense_h_to_4h(_gate)?\.(weight|bias)$"), 0),
    (re.compile(r"\.attention\.dense\.weight$"), 1),
    (re.compile(r"\.dense_4h_to_h\.weight$"), 1),
)


def split_dim(name: str) -> Optional[int]:
    """The dimension of parameter `name` that tensor parallelism splits, or None when it is whole."""
    for pattern, dim in _SPLIT_RULES:
        if pattern.search(name):
            return dim
    return None


def shard(tensor: torch.Tensor, dim: Optional[int], rank: int, size: int) -> torch.Tensor:
    """This rank's contiguous slice of a whole tensor (the tensor itself when dim is None)."""
    if dim is None or size == 1:
        return tensor
    if tensor.shape[dim] % size:
        raise ValueError(f"dimension {dim} of shape {tuple(tensor.shape)} does not split into {size} equal parts")
    return tensor.chunk(size, dim=dim)[rank]


def _no_init(_weight: torch.Tensor) -> None:
    """Weights are copied from the whole model, so megatron-core must not initialise them."""


def _mark_split(param: Optional[nn.Parameter], dim: int) -> None:
    # DeepSpeed's gradient-norm code counts a parameter with this attribute on every tensor-parallel
    # rank and any other parameter once; megatron-core sets it only when it initialises weights itself.
    if param is not None and not hasattr(param, "tensor_model_parallel"):
        from megatron.core.tensor_parallel.layers import set_tensor_model_parallel_attributes

        set_tensor_model_parallel_attributes(param, is_parallel=True, dim=dim, stride=1)


def _copy(dst: Optional[nn.Parameter], src: Optional[torch.Tensor], dim: Optional[int], rank: int, size: int) -> None:
    if dst is None:
        return
    with torch.no_grad():
        dst.copy_(shard(src, dim, rank, size))


def _layer_classes():
    from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear, VocabParallelEmbedding

    class ColumnParallel(ColumnParallelLinear):
        """megatron-core's column-parallel linear returning only the output (bias added inside)."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward(x)[0]

    class RowParallel(RowParallelLinear):
        """megatron-core's row-parallel linear returning only the output. Under sequence parallelism
        the partial outputs are reduce-scattered over the sequence instead of all-reduced."""

        reduce_scatter_sequence = False

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if not self.reduce_scatter_sequence:
                return super().forward(x)[0]
            out = sp.reduce_scatter_to_sequence(F.linear(x, self.weight), self.tp_group)
            return out if self.bias is None else out + self.bias

    class OutputLayer(ColumnParallelLinear):
        """The output layer over this rank's vocabulary slice; reads the embedding slice when tied."""

        def forward(self, hidden: torch.Tensor, tied_weight: Optional[torch.Tensor] = None) -> torch.Tensor:
            if self.weight is None and tied_weight is None:
                raise ValueError("a tied output layer needs the word embedding weight")
            return super().forward(hidden, weight=None if self.weight is not None else tied_weight)[0]

    return ColumnParallel, RowParallel, OutputLayer, VocabParallelEmbedding


def tensor_parallelize(model: nn.Module, *, rank: int, size: int, group, sequence_parallel: bool) -> None:
    """Replace `model`'s (a GPTModel) layers in place by their tensor-parallel slices for `rank` of `size`."""
    from megatron.core import ModelParallelConfig

    ColumnParallel, RowParallel, OutputLayer, VocabParallelEmbedding = _layer_classes()
    dtype = model.embedding.word_embeddings.weight.dtype
    config = ModelParallelConfig(
        tensor_model_parallel_size=size, sequence_parallel=False, use_cpu_initialization=True,
        perform_initialization=False, params_dtype=dtype,
    )
    common = dict(config=config, init_method=_no_init, tp_group=group)

    def column(linear: nn.Linear) -> nn.Module:
        # Under sequence parallelism the gathered input's gradient is reduce-scattered by the
        # gather itself, so the layer must not all-reduce it as well.
        layer = ColumnParallel(linear.in_features, linear.out_features, bias=linear.bias is not None,
                               gather_output=False, disable_grad_reduce=sequence_parallel, **common)
        _copy(layer.weight, linear.weight, 0, rank, size)
        _copy(layer.bias, linear.bias, 0, rank, size)
        _mark_split(layer.weight, 0)
        _mark_split(layer.bias, 0)
        return layer

    def row(linear: nn.Linear) -> nn.Module:
        layer = RowParallel(linear.in_features, linear.out_features, bias=linear.bias is not None,
                            input_is_parallel=True, skip_bias_add=False, **common)
        layer.reduce_scatter_sequence = sequence_parallel
        _copy(layer.weight, linear.weight, 1, rank, size)
        _copy(layer.bias, linear.bias, None, rank, size)
        _mark_split(layer.weight, 1)
        return layer

    for block in model.layers:
        attn = block.attention
        attn.query_key_value = column(attn.query_key_value)
        attn.dense = row(attn.dense)
        attn.num_heads //= size
        attn.num_kv_heads //= size
        mlp = block.mlp
        mlp.dense_h_to_4h = column(mlp.dense_h_to_4h)
        if mlp.dense_h_to_4h_gate is not None:
            mlp.dense_h_to_4h_gate = column(mlp.dense_h_to_4h_gate)
        mlp.dense_4h_to_h = row(mlp.dense_4h_to_h)

    whole = model.embedding.word_embeddings
    vocab, hidden = whole.weight.shape
    embedding = VocabParallelEmbedding(vocab, hidden, init_method=_no_init, config=config, tp_group=group)
    _copy(embedding.weight, whole.weight, 0, rank, size)
    _mark_split(embedding.weight, 0)
    model.embedding.word_embeddings = embedding

    tied = model.output_layer.weight is None
    output = OutputLayer(hidden, vocab, bias=False, gather_output=False, skip_weight_param_allocation=tied,
                         disable_grad_reduce=sequence_parallel, **common)
    if not tied:
        _copy(output.weight, model.output_layer.weight, 0, rank, size)
        _mark_split(output.weight, 0)
    model.output_layer = output

    builder = model.context_builder
    if builder.alibi_slopes is not None:  # each rank's heads keep their own slopes
        per_rank = len(builder.alibi_slopes) // size
        builder.alibi_slopes = builder.alibi_slopes[rank * per_rank : (rank + 1) * per_rank]

    if sequence_parallel:
        sp.scatter_output_of(model.embedding, group)
        for block in model.layers:
            sp.gather_input_of(block.attention, group)
            sp.gather_input_of(block.mlp, group)
        sp.gather_input_of(model.output_layer, group)
        after_scatter = list(model.layers) + [model.final_norm]
        sp.sum_replicated_grads(
            (p for m in after_scatter for n, p in m.named_parameters() if split_dim("." + n) is None), group
        )

