"""CacheBudget: how many KV entries of each kind a SepLLM / StreamingLLM cache keeps.

Names follow the paper and upstream Streaming-SepLLM: a = init_size (initial tokens), s = sep_size
(separator block), w = local_size (local window), c = capacity (the whole cache).

SepLLM: when the cache holds more than c entries, the separators between the separator block
and the local window join the separator block, the oldest separators beyond s are evicted, and
all other entries of that "past window" are dropped. Initial and local entries are never
evicted. Right after a compression the cache holds at most a + s + w entries, so a + s + w < c
is required for the cache to have room to grow before compressing again.

StreamingLLM: initial tokens plus the last c - a tokens (so w = c - a and there is no separator
block).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

SEPLLM = "sepllm"
STREAMINGLLM = "streamingllm"
POLICIES = (SEPLLM, STREAMINGLLM)


@dataclass(frozen=True)
class CacheBudget:
    """Sizes of the cache blocks; validated on construction."""

    init_size: int
    sep_size: int
    local_size: int
    capacity: int
    policy: str = SEPLLM

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"cache policy {self.policy!r} is unknown; choose one of {POLICIES}")
        for name in ("init_size", "sep_size", "local_size", "capacity"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an integer, got {value!r}")
            if value < 0:
                raise ValueError(f"{name} must not be negative, got {value}")
        if self.capacity <= 0:
            raise ValueError(f"capacity (cache_size, c) must be positive, got {self.capacity}")
        if self.local_size <= 0:
            raise ValueError(f"local_size (w) must be positive, got {self.local_size}")
        a, s, w, c = self.init_size, self.sep_size, self.local_size, self.capacity
        if self.policy == SEPLLM:
            if s <= 0:
                raise ValueError(f"sep_size (s) must be positive for SepLLM, got {s}; use policy 'streamingllm' for no separator block")
            if a + s + w >= c:
                raise ValueError(
                    f"init_size + sep_size + local_size must be < cache_size (a + s + w < c), got "
                    f"{a} + {s} + {w} = {a + s + w} >= {c}; lower the block sizes or raise cache_size"
                )
        else:
            if s != 0:
                raise ValueError(f"sep_size (s) must be 0 for StreamingLLM (it keeps no separators), got {s}")
            if a + w != c:
                raise ValueError(
                    f"StreamingLLM keeps the initial tokens and the last c - a tokens: local_size must equal "
                    f"cache_size - init_cache_size = {c} - {a} = {c - a}, got {w}"
                )

    @classmethod
    def sepllm(cls, init_size: int, sep_size: int, local_size: int, capacity: int) -> "CacheBudget":
        return cls(init_size, sep_size, local_size, capacity, SEPLLM)

    @classmethod
    def streamingllm(cls, init_size: int, capacity: int, local_size: Optional[int] = None) -> "CacheBudget":
        """StreamingLLM budget; local_size defaults to (and must equal) capacity - init_size."""
        return cls(init_size, 0, capacity - init_size if local_size is None else local_size, capacity, STREAMINGLLM)

    @property
    def min_after_compression_gap(self) -> int:
        """Tokens that can be appended after a compression before the next one (at least)."""
        return self.capacity - (self.init_size + self.sep_size + self.local_size)
