"""StaticSepKVCache: the token-by-token SepLLM / StreamingLLM cache with fixed shapes, for CUDA graphs.

Token-by-token streaming runs one forward pass per token through a 100M-10B model: eager
PyTorch spends longer launching kernels than the GPU spends running them. This cache keeps
every tensor at a fixed shape and never reads a value back to the host, so a whole decoding
step (the SepLLM runtime's pre-forward hook, the model and the cache updates) can be captured
once in a CUDA graph and replayed for every token (megatron.inference.graphed_step).

Same rules and positions as `SepKVCache` in token mode (tests/test_sepcache_core.py checks the
two agree): each layer holds S = capacity + 1 slots; the held entries sit left-aligned in
slots 0..n-1 in stream order and the new token goes to slot n. After the token's attention,
the cache is compressed when it holds c + 1 entries (`compress_rows`, the one statement of the
eviction rule), by one gather per layer that moves the survivors to the front. With position
shifting, keys are re-rotated by their position change at that gather (the "evict" strategy;
the rotation by 0 of an unmoved key is exact). The gather and rotation run at every step, so
the captured graph is the same whether or not this step compresses.

Only q = 1 (one token per forward pass) is supported; chunked streaming and prefill use
`SepKVCache`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from megatron.sepllm.cache.budget import CacheBudget
from megatron.sepllm.cache.kv_cache import NOT_FED, check_ready
from megatron.sepllm.cache.planner import SlotLayout, compress_rows, separator_tensor
from megatron.sepllm.cache.rotary import RotarySpec, rotate_by


@dataclass
class StaticStepPlan:
    """What a decoding step needs; the tensors are updated in place at every step."""

    new_positions: torch.Tensor  # [B, 1] rotary position of the new token
    visible: torch.Tensor  # [B, 1, S] bool: slots the new token attends to


class StaticSepKVCache:
    """Fixed-shape token-by-token cache: [B, H, capacity + 1, D] per layer."""

    static = True

    def __init__(self, budget: CacheBudget, separator_ids: Optional[Sequence[int]] = None, *,
                 pos_shift: bool = False, rotary: Optional[RotarySpec] = None, shift_strategy: str = "evict"):
        if shift_strategy != "evict":
            raise ValueError(f"the static (CUDA-graph) cache rotates keys at eviction only; shift_strategy {shift_strategy!r} "
                             "needs the dynamic cache (static=False)")
        self.budget = budget
        self.separator_ids = None if separator_ids is None else [int(i) for i in separator_ids]
        self.pos_shift = bool(pos_shift)
        self.rotary = rotary
        self.shift_strategy = shift_strategy
        self.slots = budget.capacity + 1
        self.reset()

    def reset(self) -> None:
        """Forget everything (a new, independent text)."""
        self._meta: Optional[dict[str, torch.Tensor]] = None
        self._keys: dict[int, torch.Tensor] = {}
        self._values: dict[int, torch.Tensor] = {}
        self._plan: Optional[StaticStepPlan] = None
        self._order: Optional[torch.Tensor] = None  # [B, S] slot each slot takes its entry from after the step
        self._delta: Optional[torch.Tensor] = None  # [B, S] position change of the entry moved there
        self._slot: Optional[torch.Tensor] = None  # [B] where the new token goes
        self._sep_tensor: Optional[torch.Tensor] = None
        self._updated: set[int] = set()
        self.columns = 0

    def _init_meta(self, batch: int, device) -> None:
        S = self.slots
        zb = torch.zeros(batch, S, dtype=torch.bool, device=device)
        zl = torch.zeros(batch, S, dtype=torch.long, device=device)
        self._meta = {
            "valid": zb, "is_sep": zb.clone(), "is_init": zb.clone(), "pos": zl, "orig": zl.clone(),
            "held": torch.zeros(batch, dtype=torch.long, device=device),
            "seen": torch.zeros(batch, dtype=torch.long, device=device),
            "max_held": torch.zeros((), dtype=torch.long, device=device),
        }
        self._order = zl.clone()
        self._delta = zl.clone()
        self._slot = torch.zeros(batch, 1, dtype=torch.long, device=device)
        self._plan = StaticStepPlan(torch.zeros(batch, 1, dtype=torch.long, device=device),
                                    torch.zeros(batch, 1, S, dtype=torch.bool, device=device))
        self._mask = self._plan.visible[:, None]  # one mask object for every layer and step

    # ------------------------------------------------------------------------ per forward pass
    def begin(self, input_ids: torch.Tensor, valid: Optional[torch.Tensor] = None) -> StaticStepPlan:
        """Plan one decoding step for input_ids [B, 1] (no host synchronisation)."""
        if input_ids.dim() != 2 or input_ids.shape[1] != 1:
            raise ValueError(f"the static SepLLM cache feeds one token per forward pass (input_ids [batch, 1]), got shape "
                             f"{tuple(input_ids.shape)}; use the dynamic cache (static=False) for prefill or chunked streaming")
        check_ready(self)
        if self._updated and len(self._updated) != len(self._keys):
            raise RuntimeError("a forward pass updated only some layers of the static cache; start a new cache")
        self._updated = set()
        B, device = input_ids.shape[0], input_ids.device
        if self._meta is None:
            self._init_meta(B, device)
        elif self._meta["valid"].shape[0] != B:
            raise ValueError(f"batch size changed from {self._meta['valid'].shape[0]} to {B} within one cache; reset the cache or start a new one")
        if self._sep_tensor is None or self._sep_tensor.device != device:
            self._sep_tensor = separator_tensor(self.separator_ids or [], device)
        if self.rotary is not None and self.rotary.inv_freq.device != device:
            self.rotary = RotarySpec(self.rotary.inv_freq.to(device))  # a host copy cannot be captured in a CUDA graph
        m, b = self._meta, self.budget
        real = torch.ones_like(input_ids, dtype=torch.bool) if valid is None else valid.to(device=device, dtype=torch.bool)
        real = real[:, 0]
        slot_col = torch.arange(self.slots, device=device)[None, :]
        here = slot_col == m["held"][:, None]  # [B, S] the new token's slot
        is_sep = real & torch.isin(input_ids[:, 0], self._sep_tensor) if self._sep_tensor.numel() else torch.zeros_like(real)
        is_init = real & (m["seen"] < b.init_size)
        new_pos = m["held"] if self.pos_shift else m["seen"]
        valid_u = m["valid"] | (here & real[:, None])
        sep_u = torch.where(here, is_sep[:, None], m["is_sep"])
        init_u = torch.where(here, is_init[:, None], m["is_init"])
        pos_u = torch.where(here, new_pos[:, None], m["pos"])
        orig_u = torch.where(here, m["seen"][:, None], m["orig"])
        # A padding query sees only itself, so that its softmax stays finite.
        self._plan.visible.copy_((valid_u | here)[:, None, :])
        self._plan.new_positions.copy_(new_pos[:, None])
        self._slot.copy_(m["held"][:, None])

        held_u = m["held"] + real.long()
        compressed = compress_rows(valid_u, sep_u, init_u, b)
        keep = torch.where((held_u > b.capacity)[:, None], compressed, valid_u)
        # Stable sort of "dropped" flags: survivors first, in stream order.
        order = torch.sort((~keep).to(torch.int8), dim=1, stable=True).indices
        kept = keep.gather(1, order)
        moved_pos = pos_u.gather(1, order)
        target = torch.where(kept, slot_col.expand_as(kept), 0) if self.pos_shift else moved_pos
        self._order.copy_(order)
        self._delta.copy_(torch.where(kept, target - moved_pos, 0))
        m["valid"].copy_(kept)
        m["is_sep"].copy_(sep_u.gather(1, order) & kept)
        m["is_init"].copy_(init_u.gather(1, order) & kept)
        m["pos"].copy_(torch.where(kept, target, 0))
        m["orig"].copy_(orig_u.gather(1, order))
        m["held"].copy_(kept.long().sum(1))
        m["max_held"].copy_(torch.maximum(m["max_held"], m["held"].max()))
        m["seen"].add_(real.long())
        self.columns += 1
        return self._plan

    def update(self, layer: int, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write this step's key/value [B, H, 1, D] into its slot; returns all S slots."""
        if self._plan is None:
            raise RuntimeError(f"StaticSepKVCache.update before begin(): {NOT_FED}")
        if layer in self._updated:
            raise RuntimeError(f"layer {layer} was updated twice in one forward pass; call begin() before each forward")
        if key.shape[2] != 1:
            raise ValueError(f"layer {layer}: the static cache takes one new key per forward pass, got {key.shape[2]}")
        if layer not in self._keys:
            if self.columns != 1:
                raise RuntimeError(f"layer {layer} joined the static cache after the first step")
            B, H, _, D = key.shape
            self._keys[layer] = key.new_zeros(B, H, self.slots, D)
            self._values[layer] = value.new_zeros(B, value.shape[1], self.slots, value.shape[3])
        k, v = self._keys[layer], self._values[layer]
        k.scatter_(2, self._slot[:, None, :, None].expand(key.shape), key)
        v.scatter_(2, self._slot[:, None, :, None].expand(value.shape), value)
        self._updated.add(layer)
        return k, v

    def attention_mask(self) -> torch.Tensor:
        """[B, 1, 1, S] bool (True = attend)."""
        if self._plan is None:
            raise RuntimeError("attention_mask before begin()")
        return self._mask

    def finish_layer(self, layer: int) -> None:
        """Move layer `layer`'s survivors to the front (and re-rotate them), after its attention."""
        k, v = self._keys[layer], self._values[layer]
        idx = self._order[:, None, :, None]
        moved_k = k.gather(2, idx.expand_as(k))
        if self.pos_shift:
            moved_k = rotate_by(moved_k, self._delta, self.rotary)
        k.copy_(moved_k)
        v.copy_(v.gather(2, idx.expand_as(v)))

    # ---------------------------------------------------------------------------- inspection
    @property
    def layout(self) -> Optional[SlotLayout]:
        if self._meta is None:
            return None
        m = self._meta
        return SlotLayout(m["valid"], m["is_sep"], m["is_init"], m["orig"], m["pos"], m["seen"], self.columns)

    def held(self, layer: int = 0) -> int:
        """Entries the fullest row holds now (reads back from the device)."""
        return 0 if self._meta is None else int(self._meta["held"].max())

    def max_held(self) -> int:
        """The most entries any row held after any step (its evictions applied), as SepKVCache.max_held."""
        return 0 if self._meta is None else int(self._meta["max_held"])

    def layer_kv(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The held keys and values of `layer` for row 0's count of entries [B, H, held, D]."""
        n = self.held(layer)
        return self._keys[layer][:, :, :n], self._values[layer][:, :, :n]

    @property
    def num_layers(self) -> int:
        return len(self._keys)

    @property
    def columns_seen(self) -> int:
        return self.columns

    def kept_orig_positions(self, row: int = 0) -> list[int]:
        return [] if self._meta is None else self.layout.kept_positions(row)

    def kv_ratio(self) -> float:
        return 1.0 if self._meta is None else self.layout.kv_ratio()

    def select_rows(self, index: torch.Tensor) -> None:
        raise ValueError("the static SepLLM cache serves streaming with a fixed batch; beam search and row selection need the dynamic cache (static=False)")
