"""One transformer block, sequential or parallel (GPT-J) residual.

    sequential:  h = x + attn(ln1(x));  out = h + mlp(ln2(h))
    parallel:    out = x + attn(ln1(x)) + mlp(ln2(x))      (gpt_j_residual, Pythia)
    parallel + gpt_j_tied: ln2 is ln1, so the block has no post_attention_layernorm.

A block can run on its own, as on a pipeline stage: given only the per-token tensors it rebuilds
(or fetches from the shared ContextBuilder's cache) the forward context.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from megatron.model.attention import SelfAttention
from megatron.model.dimensions import ModelDims
from megatron.model.forward_context import ContextBuilder, ForwardContext
from megatron.model.mlp import MLP
from megatron.model.norms import build_norm
from megatron.neox_arguments.model import ModelArgs
from megatron.neox_arguments.sepllm import SepLLMArgs


class TransformerBlock(nn.Module):
    def __init__(
        self,
        args: ModelArgs,
        sep: SepLLMArgs,
        dims: ModelDims,
        layer_idx: int,
        context_builder: ContextBuilder,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.parallel_residual = bool(args.gpt_j_residual)
        self.input_layernorm = build_norm(args, dims.hidden_size, device=device, dtype=dtype)
        self.post_attention_layernorm = None
        if not (args.gpt_j_residual and args.gpt_j_tied):
            self.post_attention_layernorm = build_norm(args, dims.hidden_size, device=device, dtype=dtype)
        self.attention = SelfAttention(args, sep, dims, layer_idx, device=device, dtype=dtype)
        self.mlp = MLP(args, dims, device=device, dtype=dtype)
        self.hidden_dropout = nn.Dropout(float(args.hidden_dropout))
        # Shared by all blocks of a model; a plain attribute, not a submodule.
        self._context_builder = context_builder

    def forward(
        self,
        hidden: torch.Tensor,
        input_ids: torch.Tensor,
        position_ids: Optional[torch.Tensor] = None,
        doc_ids: Optional[torch.Tensor] = None,
        key_valid: Optional[torch.Tensor] = None,
        *,
        ctx: Optional[ForwardContext] = None,
    ) -> torch.Tensor:
        if ctx is None:  # on its own (a pipeline stage): the model's loop would pass this
            ctx = self._context_builder(input_ids, position_ids, doc_ids, key_valid).for_layer(self.layer_idx)
        attn_in = self.input_layernorm(hidden)
        attn_out = self.hidden_dropout(self.attention(attn_in, ctx))
        if self.parallel_residual:
            mlp_in = attn_in if self.post_attention_layernorm is None else self.post_attention_layernorm(hidden)
            return self.hidden_dropout(self.mlp(mlp_in)) + attn_out + hidden
        hidden = hidden + attn_out
        return hidden + self.hidden_dropout(self.mlp(self.post_attention_layernorm(hidden)))
