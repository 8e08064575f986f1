"""The MLP: dense_h_to_4h -> activation -> dense_4h_to_h.

A gated activation (swiglu, geglu) adds a separate gate projection, dense_h_to_4h_gate, and
computes act(gate(x)) * dense_h_to_4h(x). Keeping gate and value in two column-split linears
(rather than one fused [value | gate] matrix as GPT-NeoX's linear1) lets tensor parallelism cut
both along their output dimension without reordering rows. In Llama's names: dense_h_to_4h is
up_proj, dense_h_to_4h_gate is gate_proj, dense_4h_to_h is down_proj.
"""
from __future__ import annotations

import torch
from torch import nn

from megatron.model.activations import activation_fn
from megatron.model.dimensions import ModelDims
from megatron.neox_arguments.model import ModelArgs


class MLP(nn.Module):
    def __init__(self, args: ModelArgs, dims: ModelDims, device=None, dtype=None) -> None:
        super().__init__()
        bias = bool(args.use_bias_in_mlp)
        h, w = dims.hidden_size, dims.mlp_width
        self.dense_h_to_4h = nn.Linear(h, w, bias=bias, device=device, dtype=dtype)
        self.dense_h_to_4h_gate = nn.Linear(h, w, bias=bias, device=device, dtype=dtype) if dims.gated_mlp else None
        self.dense_4h_to_h = nn.Linear(w, h, bias=bias, device=device, dtype=dtype)
        self.act = activation_fn(args.activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dense_h_to_4h_gate is not None:
            inner = self.act(self.dense_h_to_4h_gate(x)) * self.dense_h_to_4h(x)
        else:
            inner = self.act(self.dense_h_to_4h(x))
        return self.dense_4h_to_h(inner)
