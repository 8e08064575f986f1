"""Per-micro-batch metadata of the Sep-Attention kernels, built once and shared by all layers.

Everything is O(B x L) and built with a handful of scans and one scatter, with no host sync,
so a new batch (other separator counts, other documents) never changes a shape: the kernels
read the counts from device memory and never recompile.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from megatron.sepllm.mask import AttentionPlan

_CACHE_ATTR = "_sep_kernel_layouts"


@dataclass
class SepLayout:
    """Compact kept-key list and document bounds of one micro-batch (see triton_kernels.py)."""

    kept_pos: torch.Tensor  # [B, L] int32: positions of kept, non-padding keys in order; then L
    kept_count: torch.Tensor  # [B, L+1] int32: kept keys at positions < p
    doc: Optional[torch.Tensor] = None  # [B, L] int32
    doc_start: Optional[torch.Tensor] = None  # [B, L] int32
    doc_end: Optional[torch.Tensor] = None  # [B, L] int32
    valid: Optional[torch.Tensor] = None  # [B, L] int8

    def kept_fraction(self) -> torch.Tensor:
        """Mean share of kept keys per row (a device scalar; read it only where a sync is fine)."""
        L = self.kept_pos.shape[1]
        return self.kept_count[:, -1].float().mean() / max(L, 1)


def build_layout(
    kept: Optional[torch.Tensor],
    *,
    length: int,
    batch: int,
    device: torch.device,
    doc_ids: Optional[torch.Tensor] = None,
    key_valid: Optional[torch.Tensor] = None,
) -> SepLayout:
    """The kernel metadata for one kept pattern (None: nothing kept, e.g. a full-attention layer)."""
    B, L = batch, length
    pos = torch.arange(L, device=device, dtype=torch.int32).expand(B, L)
    if kept is None:
        eff = torch.zeros(B, L, dtype=torch.bool, device=device)
    else:
        eff = kept.to(device=device, dtype=torch.bool)
        if key_valid is not None:
            eff = eff & key_valid.to(device=device, dtype=torch.bool)
    csum = torch.cumsum(eff, dim=1, dtype=torch.int32)
    kept_count = torch.zeros(B, L + 1, dtype=torch.int32, device=device)
    kept_count[:, 1:] = csum
    # Scatter each kept position to its compact slot; non-kept ones go to a spill column L.
    slots = torch.where(eff, csum - 1, torch.full_like(csum, L)).long()
    kept_pos = torch.full((B, L + 1), L, dtype=torch.int32, device=device)
    kept_pos.scatter_(1, slots, pos)
    layout = SepLayout(kept_pos=kept_pos[:, :L].contiguous(), kept_count=kept_count)

    if doc_ids is not None:
        doc = doc_ids.to(device=device, dtype=torch.int32).contiguous()
        # The kernels skip whole key ranges outside a query's document, which is exact only when
        # each document is one contiguous run (as document_ids_from_eod makes them).
        if L > 1:
            torch._assert_async(
                (doc[:, 1:] >= doc[:, :-1]).all(),
                "Sep-Attention kernel: doc_ids must be non-decreasing along each row (one contiguous run per document)",
            )
        change = torch.ones(B, L, dtype=torch.bool, device=device)
        change[:, 1:] = doc[:, 1:] != doc[:, :-1]
        starts = torch.where(change, pos, torch.zeros_like(pos))
        doc_start = torch.cummax(starts, dim=1).values.to(torch.int32)
        last = torch.ones(B, L, dtype=torch.bool, device=device)
        last[:, :-1] = change[:, 1:]
        ends = torch.where(last, pos + 1, torch.full_like(pos, L))
        doc_end = torch.flip(torch.cummin(torch.flip(ends, [1]), dim=1).values, [1]).to(torch.int32)
        layout.doc, layout.doc_start, layout.doc_end = doc, doc_start.contiguous(), doc_end.contiguous()
    if key_valid is not None:
        layout.valid = key_valid.to(device=device, dtype=torch.int8).contiguous()
    return layout


def plan_layout(plan: AttentionPlan, layer: int, device: torch.device) -> SepLayout:
    """The layout for `layer`, built on first use and cached on the plan.

    Layers share one layout per distinct kept tensor (FixLLM has one per interval). The cache
    key comes from the plan's structure, not from object ids, so that torch.compile guards on
    the same things for every batch and never recompiles.
    """
    cache = getattr(plan, _CACHE_ATTR, None)
    if cache is None:  # getattr/setattr rather than __dict__: torch.compile traces these
        cache = {}
        setattr(plan, _CACHE_ATTR, cache)
    if plan.windows[layer] is None:
        key, kept = "full", None
    else:
        kept = plan.layer_kept(layer)
        key = "shared"
        if plan.per_layer_kept is not None:
            key = next(j for j in range(layer + 1) if plan.per_layer_kept[j] is kept)
    if key not in cache:
        ref = plan._ref()
        cache[key] = build_layout(
            kept, length=ref.shape[1], batch=ref.shape[0], device=device,
            doc_ids=plan.doc_ids, key_valid=plan.key_valid,
        )
    return cache[key]
