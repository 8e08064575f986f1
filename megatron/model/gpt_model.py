"""GPTModel: GPT-NeoX / Llama-shaped decoder with SepLLM attention, on one device.

The model is a flat sequence of stages, in order (see `stages()`):
    embedding -> layers[0] ... layers[N-1] -> final_norm -> output_layer
Each stage is an ordinary module with plain nn.Linear / nn.Embedding weights under GPT-NeoX names,
so tensor parallelism can swap in megatron-core's Column/RowParallelLinear and DeepSpeed's
PipelineModule can be built from the same stages. A block needs only the hidden states and the
per-token tensors (input_ids, position_ids, doc_ids, key_valid) to run, because it can rebuild the
forward context (SepLLM plan, rotary tables) itself; inside one model the context is built once per
forward and shared by every block.

With tied embeddings (no_weight_tying false) the output layer has no weight of its own and reads
embedding.word_embeddings.weight.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from megatron.model.block import TransformerBlock
from megatron.model.dimensions import resolve_dims
from megatron.model.embedding import Embedding
from megatron.model.forward_context import ContextBuilder, ForwardContext
from megatron.model.init_functions import init_method
from megatron.model.norms import RMSNorm, build_norm
from megatron.neox_arguments.model import ModelArgs
from megatron.neox_arguments.sepllm import SepLLMArgs


class OutputLayer(nn.Module):
    """hidden -> logits over the padded vocabulary; without a weight of its own when tied."""

    def __init__(self, hidden_size: int, vocab_size: int, tied: bool, device=None, dtype=None) -> None:
        super().__init__()
        self.weight = None if tied else nn.Parameter(torch.empty(vocab_size, hidden_size, device=device, dtype=dtype))

    def forward(self, hidden: torch.Tensor, tied_weight: Optional[torch.Tensor] = None) -> torch.Tensor:
        weight = self.weight if self.weight is not None else tied_weight
        if weight is None:
            raise ValueError("a tied output layer needs the word embedding weight")
        return F.linear(hidden, weight)


class GPTModel(nn.Module):
    def __init__(
        self,
        model_args: ModelArgs,
        sep_args: SepLLMArgs,
        vocab_size: int,
        *,
        device: torch.device | str | None = None,
        dtype: Optional[torch.dtype] = None,
    ) -> None:
        """`vocab_size` is the padded vocabulary size (see `padded_vocab_size`).

        On device "meta" no memory is allocated and no initialisation runs: use it to inspect the
        shape and parameter count of large configurations.
        """
        super().__init__()
        self.model_args, self.sep_args = model_args, sep_args
        dims = resolve_dims(model_args, sep_args, vocab_size)
        self.dims = dims
        self.context_builder = ContextBuilder(model_args, sep_args, dims)
        self.embedding = Embedding(model_args, sep_args, dims, device=device, dtype=dtype)
        self.layers = nn.ModuleList(
            TransformerBlock(model_args, sep_args, dims, i, self.context_builder, device=device, dtype=dtype)
            for i in range(dims.num_layers)
        )
        self.final_norm = build_norm(model_args, dims.hidden_size, device=device, dtype=dtype)
        self.output_layer = OutputLayer(
            dims.hidden_size, dims.vocab_size, tied=not model_args.no_weight_tying, device=device, dtype=dtype
        )
        self.checkpoint_num_layers = 0
        if device is None or torch.device(device).type != "meta":
            self.init_weights()

    # ---- structure -------------------------------------------------------------------------

    def stages(self) -> list[nn.Module]:
        """The model as an ordered list of stages, for building a pipeline."""
        return [self.embedding, *self.layers, self.final_norm, self.output_layer]

    @property
    def tied_embeddings(self) -> bool:
        return self.output_layer.weight is None

    # ---- initialisation --------------------------------------------------------------------

    @torch.no_grad()
    def init_weights(self) -> None:
        """Initialise every weight as GPT-NeoX does (see megatron.model.init_functions)."""
        a, d = self.model_args, self.dims
        sizes = dict(std=float(a.init_method_std), num_layers=d.num_layers, hidden_size=d.hidden_size)
        init, out_init = init_method(a.init_method, **sizes), init_method(a.output_layer_init_method, **sizes)
        for module in self.modules():
            if isinstance(module, nn.Linear) and module.bias is not None:
                module.bias.zero_()
            elif isinstance(module, nn.LayerNorm):
                module.reset_parameters()
            elif isinstance(module, RMSNorm):
                module.weight.fill_(1.0)
        init(self.embedding.word_embeddings.weight)
        if self.embedding.position_embeddings is not None:
            init(self.embedding.position_embeddings.weight)
        for block in self.layers:
            init(block.attention.query_key_value.weight)
            out_init(block.attention.dense.weight)
            init(block.mlp.dense_h_to_4h.weight)
            if block.mlp.dense_h_to_4h_gate is not None:
                init(block.mlp.dense_h_to_4h_gate.weight)
            out_init(block.mlp.dense_4h_to_h.weight)
        if self.output_layer.weight is not None:
            init(self.output_layer.weight)

    # ---- activation checkpointing ----------------------------------------------------------

    def enable_activation_checkpointing(self, num_layers: int = 1) -> None:
        """Recompute activations in chunks of `num_layers` blocks in backward (0 turns it off).

        This is GPT-NeoX's checkpoint_activations / checkpoint_num_layers, with
        torch.utils.checkpoint (use_reentrant=False, dropout RNG state preserved).
        """
        if num_layers < 0:
            raise ValueError(f"checkpoint_num_layers must be >= 0, got {num_layers}")
        self.checkpoint_num_layers = int(num_layers)

    # ---- forward ---------------------------------------------------------------------------

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: Optional[torch.Tensor] = None,
        doc_ids: Optional[torch.Tensor] = None,
        key_valid: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Logits [B, L, padded vocab] in the parameter dtype.

        input_ids [B, L]; position_ids [B, L] (default 0..L-1; ignored under BiPE, which derives its
        own); doc_ids [B, L] keeps attention inside documents; key_valid [B, L] False for padding.
        """
        ctx = self.context_builder(input_ids, position_ids, doc_ids, key_valid)
        hidden = self.embedding(input_ids, ctx)
        hidden = self.run_layers(hidden, input_ids, position_ids, doc_ids, key_valid, ctx=ctx)
        return self.output_layer(self.final_norm(hidden), self.embedding.word_embeddings.weight)

    def run_layers(
        self,
        hidden: torch.Tensor,
        input_ids: torch.Tensor,
        position_ids: Optional[torch.Tensor] = None,
        doc_ids: Optional[torch.Tensor] = None,
        key_valid: Optional[torch.Tensor] = None,
        *,
        ctx: Optional[ForwardContext] = None,
    ) -> torch.Tensor:
        """All transformer blocks, with activation checkpointing when it is on and gradients are needed."""
        tokens = (input_ids, position_ids, doc_ids, key_valid)
        chunk = self.checkpoint_num_layers
        if not chunk or not torch.is_grad_enabled():
            return _run_blocks(self.layers, hidden, *tokens, ctx=ctx)
        for start in range(0, len(self.layers), chunk):
            blocks = self.layers[start : start + chunk]
            hidden = checkpoint(_run_blocks, blocks, hidden, *tokens, ctx=ctx, use_reentrant=False)
        return hidden


def _run_blocks(blocks, hidden, input_ids, position_ids, doc_ids, key_valid, *, ctx):
    for block in blocks:
        layer_ctx = ctx.for_layer(block.layer_idx) if ctx is not None else None
        hidden = block(hidden, input_ids, position_ids, doc_ids, key_valid, ctx=layer_ctx)
    return hidden
