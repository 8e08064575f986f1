"""SepKVCache: the one SepLLM / StreamingLLM KV cache, shared by every user.

Users: the transformers `SepCache` (megatron.sepllm.hf.sepcache), streaming perplexity
(megatron.inference.streaming) and generation with our own models. A forward pass over a chunk
of q tokens (q = 1 when decoding) goes:

    plan = cache.begin(input_ids, valid)      # once per forward; plan.new_positions are the
                                              # rotary positions to give the new tokens
    for each layer:
        k, v = cache.update(layer, k_new, v_new)   # old slots + the chunk: [B, H, N + q, D]
        out = attention(q, k, v, mask=cache.attention_mask())  # [B, 1, q, N + q] bool
        cache.finish_layer(layer)             # apply this chunk's evictions to the layer

`finish_layer` is also applied lazily by the next `begin`, so a caller that cannot call it
after its attention still gets a correct cache (it then holds N + q entries between forwards
instead of at most c).

Position shifting (pos_shift=True) gives every key its position inside the cache, as
StreamingLLM and upstream do. Keys are stored rotated; when evictions move them, either they
are rotated by the position change once at eviction (shift_strategy="evict", the default) or
the stored keys keep their insertion rotation and every read rotates them
(shift_strategy="read"); benchmarks/streaming.py compares the two.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from megatron.sepllm.cache.budget import SEPLLM, CacheBudget
from megatron.sepllm.cache.planner import ChunkPlan, SlotLayout, plan_chunk, separator_tensor
from megatron.sepllm.cache.rotary import RotarySpec, rotate_by

SHIFT_STRATEGIES = ("evict", "read")


NOT_FED = ("the cache must see the token ids of every forward pass first: call megatron.sepllm.hf.apply_sepllm(model, "
            "...) before using a SepCache (its forward hook feeds the cache), and keep it applied while the cache is in use")


def check_ready(cache) -> None:
    """What a cache needs before its first forward pass (both caches; apply_sepllm fills these in)."""
    if cache.budget.policy == SEPLLM and not cache.separator_ids:
        raise ValueError("a SepLLM cache needs separator_token_ids (none were given and none were filled in by apply_sepllm)")
    if cache.pos_shift and cache.rotary is None:
        raise ValueError("pos_shift=True needs the model's rotary frequencies (rotary=RotarySpec...); apply_sepllm fills them in")


class SepKVCache:
    """KV cache keeping initial, separator and local entries within a fixed capacity."""

    static = False

    def __init__(
        self,
        budget: CacheBudget,
        separator_ids: Optional[Sequence[int]] = None,
        *,
        pos_shift: bool = False,
        rotary: Optional[RotarySpec] = None,
        shift_strategy: str = "evict",
    ):
        if shift_strategy not in SHIFT_STRATEGIES:
            raise ValueError(f"shift_strategy {shift_strategy!r} is unknown; choose one of {SHIFT_STRATEGIES}")
        self.budget = budget
        self.separator_ids = None if separator_ids is None else [int(i) for i in separator_ids]
        self.pos_shift = bool(pos_shift)
        self.rotary = rotary
        self.shift_strategy = shift_strategy
        self.reset()

    # ----------------------------------------------------------------------------- lifecycle
    def reset(self) -> None:
        """Forget everything (a new, independent text)."""
        self.layout: Optional[SlotLayout] = None
        self.plan: Optional[ChunkPlan] = None
        self._keys: dict[int, torch.Tensor] = {}
        self._values: dict[int, torch.Tensor] = {}
        self._state: dict[int, str] = {}  # layer -> "ready" (holds layout) | "union" (holds layout + chunk)
        self._updated: set[int] = set()
        self._max_held = 0
        self._stored_pos: Optional[torch.Tensor] = None  # shift_strategy="read": rotation the stored keys carry
        self._stored_union: Optional[torch.Tensor] = None
        self._sep_tensor: Optional[torch.Tensor] = None
        self._read_delta: Optional[torch.Tensor] = None
        self._evict_delta: Optional[torch.Tensor] = None
        self._mask: Optional[torch.Tensor] = None
        self._stored_moved = False  # shift_strategy="read": an eviction has moved the stored keys off their positions

    def begin(self, input_ids: torch.Tensor, valid: Optional[torch.Tensor] = None) -> ChunkPlan:
        """Plan the forward pass over `input_ids` [B, q]; `valid` [B, q] marks real (non-padding) tokens."""
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [batch, length], got shape {tuple(input_ids.shape)}")
        check_ready(self)
        self._finish_all()
        if self.layout is None:
            self.layout = SlotLayout.empty(input_ids.shape[0], input_ids.device)
        if self._sep_tensor is None or self._sep_tensor.device != input_ids.device:
            self._sep_tensor = separator_tensor(self.separator_ids or [], input_ids.device)
        before = self.layout
        plan = plan_chunk(before, input_ids, valid, self.budget, self._sep_tensor, pos_shift=self.pos_shift)
        # Rotations are computed once per chunk, not once per layer, and skipped without reading the
        # positions back to the host: until an eviction the stored keys sit at their positions (the
        # delta is zero); after one, rotating an unmoved key by 0 leaves it unchanged.
        self._read_delta = self._evict_delta = None
        if self.pos_shift and self.shift_strategy == "read":
            stored = self._stored_pos if self._stored_pos is not None else before.key_pos
            self._stored_union = torch.cat([stored, plan.new_positions], 1)
            if self._stored_moved:
                self._read_delta = plan.union_pos - self._stored_union
        if self.pos_shift and self.shift_strategy == "evict" and plan.key_delta is not None:
            self._evict_delta = plan.key_delta
        self.plan = plan
        self._mask = plan.visible[:, None]  # one mask object for every layer of this forward
        self.layout = plan.next_layout
        self._updated = set()
        return plan

    # ------------------------------------------------------------------------------ per layer
    def update(self, layer: int, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append this chunk's keys/values [B, H, q, D]; returns the old entries plus the chunk."""
        plan = self.plan
        if plan is None:
            raise RuntimeError(f"SepKVCache.update before begin(): {NOT_FED}")
        if layer in self._updated:
            raise RuntimeError(f"layer {layer} was updated twice in one forward pass; call begin() before each forward")
        q = plan.new_positions.shape[1]
        if key.shape[2] != q or value.shape[2] != q:
            raise ValueError(f"layer {layer}: got {key.shape[2]} new keys for a chunk of {q} tokens")
        old_width = plan.visible.shape[2] - q
        if layer in self._keys:
            if self._keys[layer].shape[2] != old_width:
                raise RuntimeError(f"layer {layer} holds {self._keys[layer].shape[2]} entries but the cache layout has {old_width}")
            k = torch.cat([self._keys[layer], key], dim=2)
            v = torch.cat([self._values[layer], value], dim=2)
        elif old_width == 0:
            k, v = key, value
        else:
            raise RuntimeError(f"layer {layer} has no cached entries but the other layers hold {old_width}")
        self._keys[layer], self._values[layer] = k, v
        self._state[layer] = "union"
        self._updated.add(layer)
        if self._read_delta is not None:
            k = rotate_by(k, self._read_delta, self.rotary)
        return k, v

    def attention_mask(self) -> torch.Tensor:
        """[B, 1, q, N + q] bool (True = attend) for the current chunk, the same in every layer."""
        if self.plan is None:
            raise RuntimeError("attention_mask before begin()")
        return self._mask

    def finish_layer(self, layer: int) -> None:
        """Apply the current chunk's evictions to `layer` (after its attention)."""
        if self._state.get(layer) != "union":
            return
        plan = self.plan
        if plan.gather is not None:
            k, v = self._keys[layer], self._values[layer]
            B, H, _, D = k.shape
            idx = plan.gather[:, None, :, None].expand(B, H, plan.gather.shape[1], D)
            k = k.gather(2, idx)
            v = v.gather(2, idx.expand(B, v.shape[1], plan.gather.shape[1], v.shape[3]))
            if self._evict_delta is not None:
                k = rotate_by(k, self._evict_delta, self.rotary)
            self._keys[layer], self._values[layer] = k, v
        self._state[layer] = "ready"
        self._max_held = max(self._max_held, self._keys[layer].shape[2])

    def _finish_all(self) -> None:
        for layer in [l for l, s in self._state.items() if s == "union"]:
            self.finish_layer(layer)
        if self.plan is not None and self.pos_shift and self.shift_strategy == "read":
            g = self.plan.gather
            self._stored_pos = self._stored_union if g is None else self._stored_union.gather(1, g)
            self._stored_moved = self._stored_moved or g is not None
        self.plan = None
        self._mask = None

    # --------------------------------------------------------------------------------- batch
    def select_rows(self, index: torch.Tensor) -> None:
        """Keep/reorder/repeat batch rows (beam search, num_return_sequences)."""
        self._finish_all()
        if self.layout is None:
            return
        self.layout = self.layout.select(index)
        for layer in self._keys:
            self._keys[layer] = self._keys[layer][index.to(self._keys[layer].device)]
            self._values[layer] = self._values[layer][index.to(self._values[layer].device)]
        if self._stored_pos is not None:
            self._stored_pos = self._stored_pos[index.to(self._stored_pos.device)]

    # ---------------------------------------------------------------------------- inspection
    def layer_kv(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The keys and values layer `layer` holds [B, H, held, D] (keys as attended once finished)."""
        return self._keys[layer], self._values[layer]

    def held(self, layer: int = 0) -> int:
        """Entries (slots) layer `layer` holds now."""
        return 0 if layer not in self._keys else self._keys[layer].shape[2]

    def max_held(self) -> int:
        """The most entries a layer held after any forward pass (its evictions applied)."""
        return self._max_held

    @property
    def num_layers(self) -> int:
        return len(self._keys)

    @property
    def columns_seen(self) -> int:
        """Input columns fed so far, padding included."""
        return 0 if self.layout is None else self.layout.columns

    def kept_orig_positions(self, row: int = 0) -> list[int]:
        """Stream positions of the tokens row `row` keeps after the last chunk (for inspection and tests)."""
        return [] if self.layout is None else self.layout.kept_positions(row)

    def kv_ratio(self) -> float:
        """Kept entries over tokens seen, averaged over rows (1.0 before any eviction)."""
        return 1.0 if self.layout is None else self.layout.kv_ratio()
