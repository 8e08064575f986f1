"""From a batch of packed token windows to model inputs, labels, loss mask and positions."""
from __future__ import annotations

from typing import Optional

import torch

from megatron.sepllm.mask import document_ids_from_eod, token_offsets


def get_batch(
    tokens: torch.Tensor,
    *,
    eod_id: int,
    reset_position_ids: bool = False,
    reset_attention_mask: bool = False,
    eod_mask_loss: bool = False,
    label_tokens: Optional[torch.Tensor] = None,
) -> dict:
    """Split `tokens` [B, L + 1] into inputs [B, L] and next-token labels [B, L].

    Megatron's document options (an end-of-document token belongs to the document it closes):
      reset_position_ids    positions restart at 0 after every EOD;
      reset_attention_mask  `doc_ids` [B, L] is returned so attention (dense or SepLLM, via
                            `build_attention_plan(..., doc_ids=...)`) stays inside a document;
                            otherwise doc_ids is None;
      eod_mask_loss         positions whose input is EOD do not count in the loss.
    `label_tokens` [B, L + 1], aligned with `tokens` (GPT-NeoX's label datasets), replaces the targets:
    labels are its [:, 1:], and a negative label (-100) takes its position out of the loss.
    """
    if tokens.dim() != 2 or tokens.shape[1] < 2:
        raise ValueError(f"tokens must be [batch, seq_length + 1] with seq_length >= 1, got shape {tuple(tokens.shape)}")
    tokens = tokens.long()
    input_ids = tokens[:, :-1].contiguous()
    loss_mask = torch.ones(input_ids.shape, dtype=torch.float, device=tokens.device)
    if label_tokens is None:
        labels = tokens[:, 1:].contiguous()
    else:
        if label_tokens.shape != tokens.shape:
            raise ValueError(f"label_tokens must have the shape of tokens {tuple(tokens.shape)}, got {tuple(label_tokens.shape)}")
        targets = label_tokens[:, 1:].long()
        loss_mask.masked_fill_(targets < 0, 0.0)
        labels = targets.clamp(min=0).contiguous()  # any id; the mask drops these positions
    if eod_mask_loss:
        loss_mask.masked_fill_(input_ids == eod_id, 0.0)
    doc_ids = document_ids_from_eod(input_ids, eod_id) if (reset_attention_mask or reset_position_ids) else None
    if reset_position_ids:
        position_ids = token_offsets(input_ids, doc_ids)
    else:
        position_ids = torch.arange(input_ids.shape[1], device=tokens.device).expand_as(input_ids)
    return {
        "input_ids": input_ids,
        "labels": labels,
        "loss_mask": loss_mask,
        "position_ids": position_ids.contiguous(),
        "doc_ids": doc_ids if reset_attention_mask else None,
    }
