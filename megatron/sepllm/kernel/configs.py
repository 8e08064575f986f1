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
# The fused backward's dK/dV kernels (they also add dQ atomically), tuned apart: one more product
# per tile changes which tiles fit in registers.
DKDV_FUSED, DKDV_FAR_FUSED = "dkdv_fused", "dkdv_far_fused"
SPLIT, FUSED = "split", "fused"  # backward modes: separate dQ pass, or dQ fused into dK/dV


@dataclass(frozen=True)
class BlockConfig:
    block_m: int  # queries per tile
    block_n: int  # keys per tile
    num_warps: int
    num_stages: int
    # dK/dV kernels only: query blocks that see every key of the tile run a second, mask-free loop
    mask_free: bool = False


# Keyed by (kernel, head-dim bucket). fwd/dq need block_m % block_n == 0 (band alignment).
# The fastest CANDIDATES on one H100, bf16 (2k tokens for head dim 64, 8k for 128): the sweep
# table is in benchmarks/RESULTS.md.
_DEFAULTS: dict[tuple[str, int], BlockConfig] = {
    (FWD, 64): BlockConfig(64, 32, 4, 3),
    (FWD, 128): BlockConfig(128, 32, 4, 4),
    (DQ, 64): BlockConfig(64, 32, 4, 3),
    (DQ, 128): BlockConfig(64, 32, 4, 3),
    (DKDV, 64): BlockConfig(16, 64, 4, 3),
    (DKDV, 128): BlockConfig(32, 64, 4, 3),
    (DKDV_FAR, 64): BlockConfig(32, 64, 4, 3),
    (DKDV_FAR, 128): BlockConfig(32, 64, 4, 3),
    (DKDV_FUSED, 64): BlockConfig(16, 64, 4, 3),
    (DKDV_FUSED, 128): BlockConfig(32, 64, 4, 3),
    (DKDV_FAR_FUSED, 64): BlockConfig(32, 64, 4, 3),
    (DKDV_FAR_FUSED, 128): BlockConfig(32, 64, 4, 3),
}
# Keyed by head-dim bucket. The fused backward trades the dQ pass for one more product per
# dK/dV tile, fp32 atomics and an fp32 dQ buffer of B x H x L x D (2x the size of q in bf16).
_BWD_MODE: dict[int, str] = {64: SPLIT, 128: SPLIT}

_DKDV_CANDIDATES = [
    BlockConfig(32, 64, 4, 3), BlockConfig(32, 64, 4, 3, True), BlockConfig(16, 64, 4, 3), BlockConfig(16, 64, 4, 3, True),
    BlockConfig(32, 64, 4, 4, True), BlockConfig(32, 64, 4, 5, True), BlockConfig(64, 64, 4, 3, True),
    BlockConfig(32, 128, 4, 3, True), BlockConfig(32, 128, 8, 3, True), BlockConfig(64, 128, 8, 2, True),
]
CANDIDATES: dict[str, list[BlockConfig]] = {
    FWD: [BlockConfig(128, 64, 4, 3), BlockConfig(64, 64, 4, 3), BlockConfig(128, 32, 4, 4),
          BlockConfig(128, 64, 8, 3), BlockConfig(64, 64, 4, 4), BlockConfig(64, 32, 4, 3), BlockConfig(128, 32, 8, 4),
          BlockConfig(128, 32, 4, 5), BlockConfig(128, 64, 8, 4), BlockConfig(64, 32, 4, 5)],
    DQ: [BlockConfig(64, 32, 4, 4), BlockConfig(64, 32, 4, 3), BlockConfig(128, 32, 4, 3),
         BlockConfig(64, 64, 4, 3), BlockConfig(32, 32, 4, 4), BlockConfig(64, 16, 4, 4), BlockConfig(128, 32, 8, 4),
         BlockConfig(128, 32, 4, 5), BlockConfig(64, 32, 4, 5), BlockConfig(128, 64, 8, 3)],
    DKDV: _DKDV_CANDIDATES[:7],
    DKDV_FAR: _DKDV_CANDIDATES + [BlockConfig(64, 32, 4, 3, True)],
    DKDV_FUSED: _DKDV_CANDIDATES[:7],
    DKDV_FAR_FUSED: _DKDV_CANDIDATES + [BlockConfig(64, 32, 4, 3, True)],
}

# Small tiles for TRITON_INTERPRET=1 (CPU tests): any shape works there, small ones run fast;
# mask_free so that both loops of the dK/dV kernels run.
INTERPRETER = BlockConfig(16, 16, 1, 1, mask_free=True)

_DEFAULT_BWD_MODE = dict(_BWD_MODE)
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


def bwd_mode(head_dim: int) -> str:
    """SPLIT or FUSED: which backward runs for this head dim."""
    return _BWD_MODE[head_dim_bucket(head_dim)]


def set_bwd_mode(head_dim: int, mode: str | None) -> None:
    """Force the backward mode of a head-dim bucket (benchmarks use this); None restores the default."""
    bucket = head_dim_bucket(head_dim)
    if mode is None:
        _BWD_MODE[bucket] = _DEFAULT_BWD_MODE[bucket]
    elif mode in (SPLIT, FUSED):
        _BWD_MODE[bucket] = mode
    else:
        raise ValueError(f"backward mode {mode!r}: expected {SPLIT!r} or {FUSED!r}")


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
    """Apply a sweep's best configs and backward mode (benchmarks/sep_attention.py --sweep writes best_configs.json)."""
    items = json.loads(Path(path).read_text())
    for item in items:
        if item["kind"] == "bwd_mode":
            set_bwd_mode(item["D"], item["mode"])
        else:
            set_override(item["kind"], item["D"], BlockConfig(**item["cfg"]))
    return items
