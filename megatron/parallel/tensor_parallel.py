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

Parallel-residual blocks (gpt_j_residual, no hidden dropout) share their collectives between the
two branches: out = x + reduce(attn_partial(ln1(x)) + mlp_partial(ln2(x))) + biases, so each layer
pays one all-reduce forward and one backward (under sequence parallelism one all-gather of x and
one reduce-scatter, each way) instead of one per branch. The norms then see partial gradients
from each rank's column slices and get them summed like the sequence-parallel ones.
"""
from __future__ import annotations

import re
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from megatron.model.block import TransformerBlock
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
        """megatron-core's row-parallel linear returning only the output. `reduce` says what sums the
        ranks' partial products: "all_reduce", "reduce_scatter" over the sequence (sequence
        parallelism), or "none": the caller reduces them and adds the bias (a fused block)."""

        reduce = "all_reduce"

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.reduce == "all_reduce":
                return super().forward(x)[0]
            out = F.linear(x, self.weight)
            if self.reduce == "none":
                return out
            out = sp.reduce_scatter_to_sequence(out, self.tp_group)
            return out if self.bias is None else out + self.bias

    class OutputLayer(ColumnParallelLinear):
        """The output layer over this rank's vocabulary slice; reads the embedding slice when tied."""

        def forward(self, hidden: torch.Tensor, tied_weight: Optional[torch.Tensor] = None) -> torch.Tensor:
            if self.weight is None and tied_weight is None:
                raise ValueError("a tied output layer needs the word embedding weight")
            return super().forward(hidden, weight=None if self.weight is not None else tied_weight)[0]

    return ColumnParallel, RowParallel, OutputLayer, VocabParallelEmbedding


class FusedBranchesBlock(TransformerBlock):
    """A tensor-parallel parallel-residual block whose branches share one collective each way.

    `tensor_parallelize` gives this class to the built blocks it applies to; parameters and their
    names are the block's own, so checkpoints do not change.
    """

    tp_group = None
    sequence_parallel = False

    def forward(self, hidden, input_ids, position_ids=None, doc_ids=None, key_valid=None, *, ctx=None):
        if ctx is None:  # on its own (a pipeline stage): the model's loop would pass this
            ctx = self._context_builder(input_ids, position_ids, doc_ids, key_valid).for_layer(self.layer_idx)
        if self.sequence_parallel:  # hidden [B, L/tp, h] -> x [B, L, h]
            x = sp.gather_from_sequence(hidden, self.tp_group)
        else:  # the same x on every rank; its partial gradients are all-reduced
            x = sp.copy_to_group(hidden, self.tp_group)
        attn_in = self.input_layernorm(x)
        mlp_in = attn_in if self.post_attention_layernorm is None else self.post_attention_layernorm(x)
        partial = self.attention(attn_in, ctx) + self.mlp(mlp_in)  # row-parallel products, unreduced
        if self.sequence_parallel:
            out = sp.reduce_scatter_to_sequence(partial, self.tp_group)
        else:
            out = sp.reduce_over_group(partial, self.tp_group)
        for bias in (self.attention.dense.bias, self.mlp.dense_4h_to_h.bias):
            if bias is not None:
                out = out + bias
        return out + hidden


def fuses_branches(block: nn.Module) -> bool:
    """Whether tensor parallelism can share one collective between `block`'s two branches: a parallel
    residual with no hidden dropout (dropping each branch's partial sum would draw other masks)."""
    return isinstance(block, TransformerBlock) and block.parallel_residual and block.hidden_dropout.p == 0.0


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

    def column(linear: nn.Linear, grad_reduced_outside: bool) -> nn.Module:
        # Under sequence parallelism the gathered input's gradient is reduce-scattered by the
        # gather itself, and in a fused block by the block; the layer must not all-reduce it as well.
        layer = ColumnParallel(linear.in_features, linear.out_features, bias=linear.bias is not None,
                               gather_output=False, disable_grad_reduce=grad_reduced_outside, **common)
        _copy(layer.weight, linear.weight, 0, rank, size)
        _copy(layer.bias, linear.bias, 0, rank, size)
        _mark_split(layer.weight, 0)
        _mark_split(layer.bias, 0)
        return layer

    def row(linear: nn.Linear, reduce: str) -> nn.Module:
        layer = RowParallel(linear.in_features, linear.out_features, bias=linear.bias is not None,
                            input_is_parallel=True, skip_bias_add=False, **common)
        layer.reduce = reduce
        _copy(layer.weight, linear.weight, 1, rank, size)
        _copy(layer.bias, linear.bias, None, rank, size)
        _mark_split(layer.weight, 1)
        return layer

    for block in model.layers:
        fuse = fuses_branches(block)
        outside = sequence_parallel or fuse
        reduce = "none" if fuse else "reduce_scatter" if sequence_parallel else "all_reduce"
        attn = block.attention
        attn.query_key_value = column(attn.query_key_value, outside)
        attn.dense = row(attn.dense, reduce)
        attn.num_heads //= size
        attn.num_kv_heads //= size
        mlp = block.mlp
        mlp.dense_h_to_4h = column(mlp.dense_h_to_4h, outside)
        if mlp.dense_h_to_4h_gate is not None:
            mlp.dense_h_to_4h_gate = column(mlp.dense_h_to_4h_gate, outside)
        mlp.dense_4h_to_h = row(mlp.dense_4h_to_h, reduce)
        if fuse:
            block.__class__ = FusedBranchesBlock
            block.tp_group, block.sequence_parallel = group, sequence_parallel

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

    # Whole parameters that see partial gradients: under sequence parallelism every one after the
    # scatter (each rank has its own tokens), else the norms of fused blocks (see FusedBranchesBlock).
    if sequence_parallel:
        sp.scatter_output_of(model.embedding, group)
        for block in model.layers:
            if not isinstance(block, FusedBranchesBlock):
                sp.gather_input_of(block.attention, group)
                sp.gather_input_of(block.mlp, group)
        sp.gather_input_of(model.output_layer, group)
        partial_grads = list(model.layers) + [model.final_norm]
    else:
        partial_grads = [norm for block in model.layers if isinstance(block, FusedBranchesBlock)
                         for norm in (block.input_layernorm, block.post_attention_layernorm) if norm is not None]
    sp.sum_replicated_grads(
        (p for m in partial_grads for n, p in m.named_parameters() if split_dim("." + n) is None), group
    )

