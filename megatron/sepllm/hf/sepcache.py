"""SepCache: the SepLLM KV cache behind transformers' Cache API (transformers 5.x).

    runtime = apply_sepllm(model, tokenizer=tok)          # hooks that feed the cache the token ids
    cache = SepCache(init_cache_size=4, sep_cache_size=64, local_size=256, cache_size=512)
    out = model.generate(**inputs, past_key_values=cache, max_new_tokens=...)

`Cache.update(key, value, layer_idx)` keeps its signature: the token ids of each forward pass
reach the cache through the forward pre-hook that `apply_sepllm` installs, which also fills in
the separator ids and, for position shifting, the model's rotary frequencies. Everything else
(eviction, batching, left padding, position shifting) lives in `megatron.sepllm.cache`.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from transformers.cache_utils import Cache

from megatron.sepllm.cache import CacheBudget, RotarySpec, SepKVCache
from megatron.sepllm.cache.budget import SEPLLM, STREAMINGLLM
from megatron.sepllm.cache.static_cache import StaticSepKVCache

try:  # transformers >= 4.54 keeps one object per layer
    from transformers.cache_utils import CacheLayerMixin
except ImportError:  # pragma: no cover - older transformers
    CacheLayerMixin = object


class _SepCacheLayer(CacheLayerMixin):
    """Per-layer view of the shared SepKVCache, for transformers code that walks `cache.layers`."""

    is_sliding = False
    is_compileable = False
    is_croppable = False
    supports_early_init = False

    def __init__(self, core: SepKVCache, layer: int):  # no super().__init__: keys/values are views
        self.core = core
        self.layer = layer
        self.is_initialized = True

    @property
    def keys(self) -> Optional[torch.Tensor]:
        return self.core._keys.get(self.layer)

    @property
    def values(self) -> Optional[torch.Tensor]:
        return self.core._values.get(self.layer)

    def lazy_initialization(self, key_states, value_states) -> None:
        return None

    def update(self, key_states, value_states, *args, **kwargs):
        return self.core.update(self.layer, key_states, value_states)

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.core.held(self.layer) + query_length, 0

    def get_seq_length(self) -> int:
        return self.core.columns_seen

    def get_max_length(self) -> int:
        return -1

    def reset(self) -> None:
        return None


class SepCache(Cache):
    """Keeps initial (a), separator (s) and local (w) entries within capacity c (upstream names).

    local_size defaults to 256 (SepLLM). policy="streamingllm" keeps the initial tokens plus the
    last c - a tokens instead (local_size then defaults to cache_size - init_cache_size). pos_shift=True gives keys their
    positions inside the cache (needed to stream far past the model's trained context).
    static=True keeps fixed shapes for token-by-token decoding under CUDA graphs (one token per
    forward pass, no prefill; see megatron.sepllm.cache.static_cache).
    """

    is_compileable = False

    def __init__(
        self,
        init_cache_size: int = 4,
        sep_cache_size: int = 64,
        local_size: Optional[int] = None,
        cache_size: int = 512,
        *,
        separator_token_ids: Optional[Sequence[int]] = None,
        policy: str = SEPLLM,
        pos_shift: bool = False,
        shift_strategy: str = "evict",
        rotary: Optional[RotarySpec] = None,
        static: bool = False,
    ):
        if policy == STREAMINGLLM:
            budget = CacheBudget.streamingllm(init_cache_size, cache_size, local_size)
        else:
            budget = CacheBudget(init_cache_size, sep_cache_size, 256 if local_size is None else local_size, cache_size, policy)
        try:
            super().__init__(layers=[])
        except TypeError:  # pragma: no cover - transformers < 4.54
            super().__init__()
            self.layers = []
        core = StaticSepKVCache if static else SepKVCache
        self.core = core(budget, separator_token_ids, pos_shift=pos_shift, rotary=rotary, shift_strategy=shift_strategy)

    def __repr__(self) -> str:
        b = self.core.budget
        return (f"SepCache(policy={b.policy}, a={b.init_size}, s={b.sep_size}, w={b.local_size}, c={b.capacity}, "
                f"pos_shift={self.core.pos_shift}, static={self.static}, held={self.core.held(0)})")

    @property
    def static(self) -> bool:
        return self.core.static

    def __len__(self) -> int:
        return len(self.layers)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        while len(self.layers) <= layer_idx:
            self.layers.append(_SepCacheLayer(self.core, len(self.layers)))
        return self.core.update(layer_idx, key_states, value_states)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Input columns seen so far (what transformers uses for positions and input slicing)."""
        return self.core.columns_seen

    def get_mask_sizes(self, query_length: int, layer_idx: int = 0) -> tuple[int, int]:
        return self.core.held(layer_idx) + query_length, 0

    def get_max_length(self, layer_idx: Optional[int] = None) -> int:
        return -1

    def get_max_cache_shape(self, layer_idx: int = 0) -> int:  # transformers 4.5x name
        return -1

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self.core.select_rows(beam_idx)

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.core.layout is not None:
            B = self.core.layout.batch
            self.core.select_rows(torch.arange(B).repeat_interleave(repeats))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self.core.select_rows(indices)

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove == 0:
            return
        raise ValueError("SepCache cannot be cropped: evicted entries cannot be restored, so assisted/speculative decoding is not supported")

    def reset(self) -> None:
        self.core.reset()
        self.layers = []

    @property
    def is_initialized(self) -> bool:
        return self.core.columns_seen > 0

    def kv_ratio(self) -> float:
        """Kept KV entries over tokens seen."""
        return self.core.kv_ratio()
