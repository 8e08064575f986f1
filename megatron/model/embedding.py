"""The embedding stage: token embeddings plus any absolute position embedding."""
from __future__ import annotations

import torch
from torch import nn

from megatron.model.dimensions import ModelDims
from megatron.model.forward_context import ForwardContext
from megatron.neox_arguments.model import ModelArgs
from megatron.neox_arguments.sepllm import SepLLMArgs


def sinusoidal_embedding(positions: torch.Tensor, hidden_size: int) -> torch.Tensor:
    """[B, L, hidden] fixed sinusoidal embedding, GPT-NeoX's layout (all sines, then all cosines)."""
    inv_freq = 1.0 / (10000 ** (torch.arange(0, hidden_size, 2, device=positions.device).float() / hidden_size))
    angles = positions[..., None].float() * inv_freq
    return torch.cat((angles.sin(), angles.cos()), dim=-1)


class Embedding(nn.Module):
    """word_embeddings, and position_embeddings when pos_emb is learned or BiPE is on."""

    def __init__(self, args: ModelArgs, sep: SepLLMArgs, dims: ModelDims, device=None, dtype=None) -> None:
        super().__init__()
        self.hidden_size = dims.hidden_size
        self.word_embeddings = nn.Embedding(dims.vocab_size, dims.hidden_size, device=device, dtype=dtype)
        self.pos_emb = args.pos_emb
        self.position_offset = int(args.opt_pos_emb_offset)
        self.position_embeddings = None
        # BiPE's intra-segment positions use a learned table whatever pos_emb says (upstream does the same).
        if args.pos_emb == "learned" or sep.USE_BiPE:
            self.position_embeddings = nn.Embedding(dims.max_positions, dims.hidden_size, device=device, dtype=dtype)
        self.dropout = nn.Dropout(float(args.hidden_dropout))

    def forward(self, input_ids: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        hidden = self.word_embeddings(input_ids)
        if self.position_embeddings is not None:
            # Checked on the length, not on the values, to avoid a device sync every step.
            if input_ids.shape[1] + self.position_offset > self.position_embeddings.num_embeddings:
                raise ValueError(
                    f"sequence length {input_ids.shape[1]} does not fit the position table "
                    f"({self.position_embeddings.num_embeddings} rows); raise max_position_embeddings"
                )
            hidden = hidden + self.position_embeddings(ctx.position_ids + self.position_offset)
        elif self.pos_emb == "sinusoidal":
            hidden = hidden + sinusoidal_embedding(ctx.position_ids, self.hidden_size).to(hidden.dtype)
        return self.dropout(hidden)
