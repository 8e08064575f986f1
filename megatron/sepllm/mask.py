"""The SepLLM attention rule as tensors: which keys each query may see.

The rule (spelled out one pair at a time in `reference.py`): query i sees key j <= i when j is
in the local window (i - j < n) or j is *kept*: an initial token, a separator (SepLLM) or a
fixed-interval anchor (FixLLM). StreamingLLM keeps only the initial tokens. Document ids and
padding restrict this further.

Everything a fast path needs is O(B x L): the per-token `kept` flags, document ids and
key validity. The dense B x L x L boolean mask is built only by `AttentionPlan.dense_mask`,
which the masked-SDPA reference path uses; fast kernels read the O(B x L) tensors instead.
"""
from __future__ import annotations

import functools

from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch

from megatron.neox_arguments.sepllm import SEPARATOR_PRESETS, SepLLMArgs

FULL = "full"
SEPLLM = "sepllm"
STREAMING = "streaming"
FIXLLM = "fixllm"


def resolve_token_ids(ids: Sequence[int] | str | None) -> list[int]:
    """Separator ids from a list or a preset name (see SEPARATOR_PRESETS)."""
    if ids is None:
        return []
    if isinstance(ids, str):
        if ids not in SEPARATOR_PRESETS:
            raise ValueError(f"unknown separator preset {ids!r}; choose one of {sorted(SEPARATOR_PRESETS)} or give a list of token ids")
        return list(SEPARATOR_PRESETS[ids])
    return [int(i) for i in ids]


def attention_mode(cfg: SepLLMArgs) -> str:
    """The attention rule a config asks for, with upstream's priority order."""
    if cfg.USE_ORIGINAL_FULL_ATTEN:
        return FULL
    if cfg.USE_FIXED_SEP_INTERVALs:
        return FIXLLM
    if cfg.streamingLLM:
        return STREAMING
    return SEPLLM


def prefill_windows(cfg: SepLLMArgs, num_layers: int) -> list[int]:
    """The training/prefill window of each layer."""
    if cfg.USE_PREFILL_LOCAL_WIN_SIZES_wrt_LAYERS:
        return [int(w) for w in cfg.prefill_loc_win_size_list]
    return [int(cfg.prefill_local_window_size)] * num_layers


@functools.lru_cache(maxsize=64)
def _separator_tensor(separator_ids: tuple[int, ...], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    # Built once per device: a fresh host-to-GPU copy from a Python list on every batch is a
    # synchronizing pageable copy, the only host sync left in a SepLLM training step.
    return torch.tensor(separator_ids, device=device, dtype=dtype)


def separator_flags(input_ids: torch.Tensor, separator_ids: Sequence[int]) -> torch.Tensor:
    """[B, L] bool: token is a separator."""
    if len(separator_ids) == 0:
        return torch.zeros_like(input_ids, dtype=torch.bool)
    return torch.isin(input_ids, _separator_tensor(tuple(int(i) for i in separator_ids), input_ids.device, input_ids.dtype))


def document_ids_from_eod(input_ids: torch.Tensor, eod_id: int) -> torch.Tensor:
    """[B, L] document index of each token; an EOD token closes its document (Megatron's rule)."""
    eod = (input_ids == eod_id).to(torch.int32)
    return torch.cumsum(eod, dim=1) - eod


def token_offsets(
    input_ids: torch.Tensor,
    doc_ids: Optional[torch.Tensor] = None,
    adaptive_init_padding_id: Optional[int] = None,
) -> torch.Tensor:
    """[B, L] offset of each token from the start of its row, its document or its first real token.

    Offsets are negative for leading padding when `adaptive_init_padding_id` is given.
    """
    B, L = input_ids.shape
    pos = torch.arange(L, device=input_ids.device).expand(B, L)
    if doc_ids is not None:
        # Start of each token's document: the position after the last document change.
        change = torch.ones_like(doc_ids, dtype=torch.bool)
        change[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
        starts = torch.where(change, pos, torch.zeros_like(pos))
        starts = torch.cummax(starts, dim=1).values
        return pos - starts
    if adaptive_init_padding_id is not None:
        real = input_ids != adaptive_init_padding_id
        first = torch.where(real.any(1), real.to(torch.int8).argmax(1), torch.full((B,), L, device=input_ids.device))
        return pos - first[:, None]
    return pos


@dataclass
class AttentionPlan:
    """What every layer of one micro-batch needs to apply its attention rule; built once.

    `kept[b, j]` marks keys visible from every later query (initial tokens, separators or
    FixLLM anchors). `windows[l]` is layer l's local window; None means full causal attention
    for that layer (mode full, or a window that covers the whole sequence).
    """

    mode: str
    kept: Optional[torch.Tensor]  # [B, L] bool
    windows: list[Optional[int]]
    exclude_diagonal: bool = True
    doc_ids: Optional[torch.Tensor] = None  # [B, L] int
    key_valid: Optional[torch.Tensor] = None  # [B, L] bool, False for padding keys
    per_layer_kept: Optional[list[torch.Tensor]] = None  # FixLLM: one kept tensor per layer
    _dense_cache: dict = field(default_factory=dict, repr=False)

    def is_causal(self, layer: int) -> bool:
        """True when `layer` computes plain causal attention (full window, no document or padding masks)."""
        return self.windows[layer] is None and self.doc_ids is None and self.key_valid is None

    @property
    def is_dense_causal(self) -> bool:
        """True when no layer deviates from plain causal attention."""
        return all(self.is_causal(layer) for layer in range(len(self.windows)))

    def layer_kept(self, layer: int) -> Optional[torch.Tensor]:
        return self.per_layer_kept[layer] if self.per_layer_kept is not None else self.kept

    def dense_mask(self, layer: int) -> torch.Tensor:
        """[B, 1, L, L] bool (True = attend) for `layer`; cached per distinct (window, kept)."""
        window = self.windows[layer]
        kept = self.layer_kept(layer)
        key = (window, id(kept) if window is not None else None)
        if key not in self._dense_cache:
            self._dense_cache[key] = dense_keep_mask(
                kept if window is not None else None,
                window,
                length=self._length(),
                batch=self._batch(),
                device=self._device(),
                exclude_diagonal=self.exclude_diagonal,
                doc_ids=self.doc_ids,
                key_valid=self.key_valid,
            )[:, None]
        return self._dense_cache[key]

    def _ref(self) -> torch.Tensor:
        for t in (self.kept, self.doc_ids, self.key_valid):
            if t is not None:
                return t
        raise ValueError("plan holds no per-token tensor")

    def _length(self) -> int:
        return self._ref().shape[1]

    def _batch(self) -> int:
        return self._ref().shape[0]

    def _device(self) -> torch.device:
        return self._ref().device


def dense_keep_mask(
    kept: Optional[torch.Tensor],
    window: Optional[int],
    *,
    length: int,
    batch: int,
    device: torch.device | str = "cpu",
    exclude_diagonal: bool = True,
    doc_ids: Optional[torch.Tensor] = None,
    key_valid: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """[B, L, L] bool mask of the SepLLM rule (window None: plain causal)."""
    i = torch.arange(length, device=device)[:, None]
    j = torch.arange(length, device=device)[None, :]
    mask = (j <= i).expand(batch, length, length)
    if window is not None:
        dist = i - j
        in_window = (dist < window) if exclude_diagonal else (dist <= window)
        mask = mask & (in_window[None] | kept[:, None, :])
    if doc_ids is not None:
        mask = mask & (doc_ids[:, :, None] == doc_ids[:, None, :])
    if key_valid is not None:
        mask = mask & (key_valid[:, None, :] | torch.eye(length, dtype=torch.bool, device=device)[None])
    return mask


def build_attention_plan(
    input_ids: torch.Tensor,
    cfg: SepLLMArgs,
    num_layers: int,
    *,
    doc_ids: Optional[torch.Tensor] = None,
    key_valid: Optional[torch.Tensor] = None,
) -> AttentionPlan:
    """The attention plan of one micro-batch: a pure function of the token ids and the config."""
    mode = attention_mode(cfg)
    L = input_ids.shape[1]
    if mode == FULL:
        return AttentionPlan(mode, None, [None] * num_layers, cfg.EXCLUDE_DIAGONAL, doc_ids, key_valid)
    offsets = token_offsets(
        input_ids, doc_ids, cfg.PADDING_ID if (cfg.BATCH_ADAPTIVE_INIT_POS and doc_ids is None) else None
    )
    initial = (offsets >= 0) & (offsets <= cfg.init_tok_max_idx)
    windows: list[Optional[int]] = []
    for w in prefill_windows(cfg, num_layers):
        covers_all = w >= L if cfg.EXCLUDE_DIAGONAL else w >= L - 1
        windows.append(None if covers_all else w)
    per_layer = None
    if mode == SEPLLM:
        kept = initial | separator_flags(input_ids, resolve_token_ids(cfg.separator_token_ids))
    elif mode == STREAMING:
        kept = initial
    else:  # FIXLLM: the anchor phase is the last token of every interval, counted from the start
        intervals = cfg.fixed_sep_intervals_list
        by_k: dict[int, torch.Tensor] = {}
        per_layer = []
        for k in intervals:
            if k not in by_k:
                by_k[k] = initial | ((offsets >= 0) & (offsets % k == k - 1))
            per_layer.append(by_k[k])
        kept = per_layer[0]
    return AttentionPlan(mode, kept, windows, cfg.EXCLUDE_DIAGONAL, doc_ids, key_valid, per_layer)


def kept_ratios(plan: AttentionPlan, layer: int = 0) -> dict[str, float]:
    """Share of the causal attention map a layer computes, and share of KV kept at the last position.

    Computed in O(B x L) from cumulative sums, never from a dense mask.
    """
    return layer_kept_ratios(plan, [layer])[0]


def layer_kept_ratios(plan: AttentionPlan, layers: Optional[list[int]] = None) -> list[dict[str, float]]:
    """kept_ratios of several layers (default all) with one read from the device: layers with the
    same window and kept pattern are computed once (the trainer logs these while its steps run)."""
    layers = list(range(len(plan.windows))) if layers is None else layers
    shared: dict[tuple, Optional[torch.Tensor]] = {}
    keys = []
    for layer in layers:
        window, kept = plan.windows[layer], plan.layer_kept(layer)
        key = (window, id(kept))
        if key not in shared:
            shared[key] = None if window is None else _ratio_tensor(plan, window, kept)
        keys.append(key)
    computed = [k for k, v in shared.items() if v is not None]
    values = dict(zip(computed, torch.stack([shared[k] for k in computed]).tolist())) if computed else {}
    full = {"attn_map_ratio": 1.0, "kv_ratio": 1.0}
    return [dict(zip(("attn_map_ratio", "kv_ratio"), values[k])) if k in values else dict(full) for k in keys]


def _ratio_tensor(plan: AttentionPlan, window: int, kept: torch.Tensor) -> torch.Tensor:
    """[attn_map_ratio, kv_ratio] as a device tensor (see kept_ratios)."""
    ref = plan._ref()
    B, L = ref.shape
    valid = plan.key_valid if plan.key_valid is not None else torch.ones(B, L, dtype=torch.bool, device=ref.device)
    pos = torch.arange(L, device=ref.device).expand(B, L)
    if plan.doc_ids is not None:
        starts = pos - token_offsets(torch.zeros_like(plan.doc_ids), plan.doc_ids)
    else:
        starts = torch.zeros_like(pos)
    zero = torch.zeros(B, 1, dtype=torch.long, device=ref.device)
    V = torch.cat([zero, torch.cumsum(valid.long(), 1)], 1)  # V[:, k] = valid count in [0, k)
    K = torch.cat([zero, torch.cumsum((kept & valid).long(), 1)], 1)
    w_lo = pos - window + (1 if plan.exclude_diagonal else 0)
    lo = torch.maximum(starts, w_lo.clamp(min=0))
    in_win = V.gather(1, pos + 1) - V.gather(1, lo)
    far_hi = w_lo.clamp(min=0)  # kept keys in [start, w_lo)
    far = (K.gather(1, torch.maximum(far_hi, starts)) - K.gather(1, starts)).clamp(min=0)
    seen = (in_win + far).float()
    total = (V.gather(1, pos + 1) - V.gather(1, starts)).float()
    return torch.stack([seen.sum() / total.sum().clamp(min=1), (seen[:, -1] / total[:, -1].clamp(min=1)).mean()])
