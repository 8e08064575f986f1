"""Block sizes of the Sep-Attention kernels: fixed per head dim, or tuned per exact shape.

The fixed table was picked from a sweep on one H100 (benchmarks/sep_attention.py --sweep; see
benchmarks/RESULTS.md). With RECOMPILE_SEP_ATTN_KERNEL the first call of each exact shape times
the candidates below on the real inputs and keeps the fastest (a few seconds of compiling once
per shape, which is why it is off by default).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Hashable, Iterable

FWD, DQ, DKDV, DKDV_FAR = "fwd", "dq", "dkdv", "dkdv_far"  # DKDV: the band part


@dataclass(frozen=True)
class BlockConfig:
    block_m: int  # queries per tile
    block_n: int  # keys per tile
    num_warps: int
    num_stages: int
    # fwd/dQ: the mask-free run of far (compact) key blocks is walked `wide` blocks at a time;
    # far dK/dV: its mask-free run of query blocks. Wider tiles there, where no mask is needed,
    # keep the masked edges at the small tile. The band dK/dV kernel has no such run (1).
    wide: int = 1

    def __post_init__(self):
        if self.wide < 1 or self.wide & (self.wide - 1):
            raise ValueError(f"BlockConfig.wide must be a power of two (Triton tile sizes are), got {self.wide}")


# Keyed by (kernel, head-dim bucket). fwd/dq need block_m % block_n == 0 (band alignment).
# The fastest CANDIDATES on one H100, bf16 (2k tokens for head dim 64, 8k for 128): the sweep
# table is in benchmarks/RESULTS.md. Head dim 128, fourth round (8k and 32k tokens): dQ with its
# mask-free far run two tiles wide, 0.479 -> 0.462 ms at 8k and 2.29 -> 2.07 ms at 32k (with the
# wide tile, the former 5 stages ran 0.64 ms at 8k). Wide tiles measured flat or slower for the
# forward and the far dK/dV kernel. Fifth round: the forward at 4 stages, with its far positions
# loaded one tile ahead (see _fwd_far_run), 4% faster at 8k and 32k, 7% at 131k.
_DEFAULTS: dict[tuple[str, int], BlockConfig] = {
    (FWD, 64): BlockConfig(64, 32, 4, 3),
    (FWD, 128): BlockConfig(128, 32, 4, 4),
    (DQ, 64): BlockConfig(64, 32, 4, 3),
    (DQ, 128): BlockConfig(64, 32, 4, 3, wide=2),
    (DKDV, 64): BlockConfig(16, 64, 4, 3),
    (DKDV, 128): BlockConfig(32, 64, 4, 3),
    (DKDV_FAR, 64): BlockConfig(32, 64, 4, 3),
    (DKDV_FAR, 128): BlockConfig(32, 64, 4, 3),
}

CANDIDATES: dict[str, list[BlockConfig]] = {
    FWD: [BlockConfig(128, 32, 4, 4), BlockConfig(64, 64, 4, 3), BlockConfig(64, 32, 4, 3), BlockConfig(128, 32, 4, 5),
          BlockConfig(64, 64, 4, 2), BlockConfig(64, 64, 8, 3), BlockConfig(64, 32, 4, 4), BlockConfig(128, 32, 4, 3),
          BlockConfig(128, 64, 8, 3), BlockConfig(64, 32, 8, 3), BlockConfig(128, 32, 4, 4, wide=2)],
    DQ: [BlockConfig(64, 32, 4, 3, wide=2), BlockConfig(64, 32, 4, 4, wide=2), BlockConfig(64, 32, 4, 5),
         BlockConfig(64, 32, 4, 3), BlockConfig(64, 32, 4, 4), BlockConfig(64, 16, 4, 4),
         BlockConfig(128, 64, 8, 3), BlockConfig(64, 32, 4, 6), BlockConfig(64, 32, 8, 5), BlockConfig(128, 32, 8, 5),
         BlockConfig(64, 16, 4, 5), BlockConfig(128, 64, 8, 4)],
    DKDV: [BlockConfig(32, 64, 4, 3), BlockConfig(16, 64, 4, 3), BlockConfig(32, 64, 4, 2), BlockConfig(16, 64, 4, 2),
           BlockConfig(32, 64, 8, 3), BlockConfig(16, 64, 4, 4), BlockConfig(16, 128, 4, 3), BlockConfig(32, 128, 8, 3),
           BlockConfig(32, 32, 4, 3)],
    DKDV_FAR: [BlockConfig(32, 64, 4, 3), BlockConfig(32, 64, 4, 4), BlockConfig(32, 64, 4, 2), BlockConfig(32, 64, 8, 3),
               BlockConfig(32, 64, 8, 4), BlockConfig(16, 64, 4, 4), BlockConfig(64, 64, 8, 3), BlockConfig(64, 128, 8, 2),
               BlockConfig(32, 128, 8, 3), BlockConfig(32, 32, 4, 3), BlockConfig(64, 32, 4, 3), BlockConfig(32, 32, 4, 4),
               BlockConfig(64, 32, 4, 4), BlockConfig(16, 32, 4, 3), BlockConfig(16, 64, 4, 3, wide=2),
               BlockConfig(16, 64, 4, 3, wide=4)],
}

# Small tiles for TRITON_INTERPRET=1 (CPU tests): any shape works there, small ones run fast.
INTERPRETER = BlockConfig(16, 16, 1, 1)

_tuned: dict[Hashable, BlockConfig] = {}
_overrides: dict[tuple[str, int], BlockConfig] = {}


MAX_HEAD_DIM = 128  # larger heads would need other tiles (registers), untuned and untested


def head_dim_bucket(head_dim: int) -> int:
    for bucket in (64, 128):
        if head_dim <= bucket:
            return bucket
    raise ValueError(f"head dim {head_dim} is above {MAX_HEAD_DIM}, which the Sep-Attention kernel does not support")


def default_config(kind: str, head_dim: int) -> BlockConfig:
    key = (kind, head_dim_bucket(head_dim))
    return _overrides.get(key, _DEFAULTS[key])


def set_override(kind: str, head_dim: int, config: BlockConfig | None) -> None:
    """Force the config of one kernel kind and head-dim bucket (benchmarks use this); None clears it."""
    key = (kind, head_dim_bucket(head_dim))
    if config is None:
        _overrides.pop(key, None)
    else:
        _overrides[key] = config


def tuned_config(kind: str, key: Hashable, candidates: Iterable[BlockConfig],
                 time_one: Callable[[BlockConfig], float]) -> BlockConfig:
    """Fastest candidate for an exact-shape key, timed once; candidates that fail to compile are skipped."""
    full_key = (kind, key)
    if full_key not in _tuned:
        best, best_ms, errors = None, float("inf"), []
        for cfg in candidates:
            try:
                ms = time_one(cfg)
            except Exception as exc:  # e.g. out of shared memory for this tile shape
                errors.append(f"{cfg}: {exc}")
                continue
            if ms < best_ms:
                best, best_ms = cfg, ms
        if best is None:
            raise RuntimeError(f"no Sep-Attention {kind} config compiled for {key}: " + "; ".join(errors))
        _tuned[full_key] = best
    return _tuned[full_key]


def load_overrides(path: Path | str) -> list[dict]:
    """Apply a sweep's best configs (benchmarks/sep_attention.py --sweep writes best_configs.json)."""
    items = json.loads(Path(path).read_text())
    for item in items:
        set_override(item["kind"], item["D"], BlockConfig(**item["cfg"]))
    return items
