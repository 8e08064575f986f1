"""Bilevel positional encoding (BiPE, arXiv 2401.16421), as upstream Training-SepLLM computes it.

Separators (BiPE_seps) cut each row into segments; a separator is the last token of its segment.
Every token gets two positions:
  * intra: its offset inside its segment. A learned absolute position table, indexed by it, is
    added to the token embeddings;
  * inter: its segment index (the number of separators before it). It replaces the token index as
    the position of the rotary or ALiBi encoding inside attention.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch


def bilevel_position_ids(input_ids: torch.Tensor, separator_ids: Sequence[int],
                         doc_starts: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(intra, inter) position ids, both [B, L] long, for input_ids [B, L].

    `doc_starts` [B, L] bool marks tokens that begin a document (reset_position_ids): both
    counts restart there, as token positions do.
    """
    seps = torch.as_tensor(list(separator_ids), device=input_ids.device, dtype=input_ids.dtype)
    is_sep = torch.isin(input_ids, seps).long()
    before = torch.cumsum(is_sep, dim=1) - is_sep  # separators before each token in the row
    pos = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
    # A segment starts right after a separator; each token looks at the latest start before it.
    next_start = torch.cummax(torch.where(is_sep.bool(), pos + 1, torch.zeros_like(pos)), dim=1).values
    start = torch.cat([torch.zeros_like(next_start[:, :1]), next_start[:, :-1]], dim=1)
    if doc_starts is None:
        return pos - start, before
    doc = torch.cummax(torch.where(doc_starts, pos, torch.zeros_like(pos)), dim=1).values  # latest document start
    return pos - torch.maximum(start, doc), before - before.gather(1, doc)
