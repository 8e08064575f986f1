"""Token-by-token forward passes replayed from a CUDA graph.

A 135M-parameter model decoding one token runs ~1,000 small kernels; launched one by one from
Python (transformers' eager forward) the GPU idles most of the step. With a fixed-shape cache
(`SepCache(static=True)`) every step launches the same kernels on the same buffers, so the whole
step (the SepLLM runtime's pre-forward hook that plans the cache, the model, the cache updates)
is captured once and replayed. Without CUDA the step simply runs eagerly.
"""
from __future__ import annotations

from typing import Optional

import torch


class GraphedTokenStep:
    """`step(ids [B, 1]) -> logits [B, 1, V]` for `model` with a static SepCache `cache`.

    The first `warmup` steps run eagerly on a side stream (they are real steps of the stream, and
    let cuBLAS and the allocator settle, as CUDA graph capture requires); the next step is
    captured and every later step replays it. The returned logits live in the graph's output
    buffer: they are overwritten by the next step.
    """

    def __init__(self, model, cache, *, warmup: int = 3, use_graph: Optional[bool] = None):
        if not getattr(cache, "static", False):
            raise ValueError("GraphedTokenStep needs a fixed-shape cache: SepCache(..., static=True)")
        self.model = model
        self.cache = cache
        self.warmup = warmup
        device = next(model.parameters()).device
        self.use_graph = device.type == "cuda" if use_graph is None else use_graph
        self._ids: Optional[torch.Tensor] = None
        self._graph = None
        self._logits: Optional[torch.Tensor] = None
        self._steps = 0

    def _forward(self) -> torch.Tensor:
        return self.model(self._ids, past_key_values=self.cache, use_cache=True).logits

    @torch.no_grad()
    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.dim() != 2 or ids.shape[1] != 1:
            raise ValueError(f"GraphedTokenStep feeds one token per step: ids must be [batch, 1], got {tuple(ids.shape)}")
        if self._ids is None:
            self._ids = ids.clone()
        else:
            self._ids.copy_(ids)
        self._steps += 1
        if not self.use_graph:
            return self._forward()
        if self._graph is not None:
            self._graph.replay()
            return self._logits
        main = torch.cuda.current_stream()
        if self._steps <= self.warmup:
            side = torch.cuda.Stream()
            side.wait_stream(main)
            with torch.cuda.stream(side):
                logits = self._forward()
            main.wait_stream(side)
            return logits
        self._graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self._graph):
            self._logits = self._forward()
        self._graph.replay()  # capture records the step without running it
        return self._logits
