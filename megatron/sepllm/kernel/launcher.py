"""Launching the Sep-Attention Triton kernels with little host work per call.

`kernel[grid](...)` runs Triton's JIT dispatch on every call: it re-derives the specialization of
each of the ~35 arguments, builds a cache key and looks the compiled kernel up, about 60-80 us of
Python per launch on the device machine's CPU, as much as a whole 2k-token kernel runs on the GPU
(four launches per forward + backward). What a compiled variant depends on is known here: the
block config, the constexprs, the dtypes, the strides (specialized on divisibility by 16) and the
16-byte alignment of the pointers; L, W, H and GROUP are not specialized on. So the first launch of
each such key goes through Triton's dispatch (compiling if needed), and later ones call the
compiled kernel's launcher directly, with the same arguments Triton's dispatch would pass it.
Under TRITON_INTERPRET=1 (CPU tests) every launch goes through the interpreter.
"""
from __future__ import annotations

import functools
from typing import Sequence

import torch
import triton

from megatron.sepllm.kernel.configs import BlockConfig

_MAX_GRID_Y = 65535  # CUDA's limit on the second grid dimension
_MAX_HANDLES = 1024  # distinct (shape, config) keys kept; more only happen with endless new shapes
_handles: dict = {}


@functools.lru_cache(maxsize=None)
def _stream_getter():
    return triton.runtime.driver.active.get_current_stream


def interpreted(kernel) -> bool:
    """True when `kernel` was created under TRITON_INTERPRET=1 (it then runs on CPU tensors)."""
    return not hasattr(kernel, "device_caches")


def launch(kernel, grid: tuple[int, int], cfg: BlockConfig, tensors: Sequence[torch.Tensor], ints: tuple,
           scalars: tuple, consts: tuple) -> None:
    """Run `kernel` on `grid` with arguments in its parameter order: pointers, specialized ints
    (strides), unspecialized scalars (L, W, H, scales, GROUP), constexprs."""
    if grid[1] > _MAX_GRID_Y:
        raise ValueError(
            f"sequence too long or batch x heads too large for the Sep-Attention kernel: launch grid {grid} exceeds "
            f"CUDA's {_MAX_GRID_Y} in its second dimension; use shorter sequences, smaller micro-batches, or "
            "USE_SEP_ATTN_KERNEL_ACCELERATOR: false"
        )
    if interpreted(kernel):
        kernel[grid](*tensors, *ints, *scalars, *consts)
        return
    ptrs = [t.data_ptr() for t in tensors]
    misaligned = 0
    for p in ptrs:
        misaligned |= p
    misaligned &= 15
    device = torch.cuda.current_device()
    # id(kernel): JITFunction hashes its source-derived cache key under a lock on every call
    key = (id(kernel), cfg, consts, ints, tuple(t.dtype for t in tensors), device)
    handle = None if misaligned else _handles.get(key)
    if handle is None:
        # Triton's dispatch: compiles on first use and returns the compiled kernel. Misaligned
        # pointers always take it (one key could then stand for several specializations).
        handle = kernel[grid](*tensors, *ints, *scalars, *consts, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
        if not misaligned:
            if len(_handles) >= _MAX_HANDLES:
                _handles.clear()
            _handles[key] = handle
        return
    # Raw pointers: the launcher would otherwise call data_ptr() and query the driver for each
    # tensor again (the tensors were checked to be CUDA tensors before we got here).
    args = (*ptrs, *ints, *scalars, *consts)
    stream = _stream_getter()(device)
    enter, leave = _hooks()
    meta = handle.launch_metadata(grid, stream, *args) if enter is not None else None
    handle.run(grid[0], grid[1], 1, stream, handle.function, handle.packed_metadata, meta, enter, leave, *args)


def _hooks():
    """Triton's launch hooks (profilers install them), or None for an empty hook chain: calling an
    empty chain and building launch metadata for it is host time for nothing."""
    runtime = triton.knobs.runtime
    enter, leave = runtime.launch_enter_hook, runtime.launch_exit_hook
    if enter is not None and not getattr(enter, "calls", True):
        enter = None
    if leave is not None and not getattr(leave, "calls", True):
        leave = None
    return enter, leave
