"""Streaming evaluation: read a long token stream through a fixed-size SepLLM / StreamingLLM cache.

Token mode (chunk_size=1) feeds one token per forward pass, as upstream Streaming-SepLLM does.
Chunked mode feeds chunk_size tokens per forward pass: each query sees exactly the entries the
token-by-token cache would hold at its step (see megatron.sepllm.cache.planner), and the cache
compresses after the chunk. Without position shifting the two modes agree up to float rounding;
with it, the keys of a chunk share one set of cache positions, so the modes differ slightly
(benchmarks/streaming.py reports the perplexity difference).

Token mode uses a fixed-shape cache (SepCache(static=True)) and replays each step from a CUDA graph
(megatron.inference.graphed_step) unless cuda_graphs=False or shift_strategy="read".

Works with any transformers model `apply_sepllm` supports (our checkpoints convert to the HF
GPT-NeoX / Llama formats). The full-attention baseline uses a DynamicCache.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Optional

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from megatron.sepllm.cache.budget import SEPLLM, STREAMINGLLM
from megatron.inference.graphed_step import GraphedTokenStep
from megatron.sepllm.hf import SepCache, apply_sepllm

FULL = "full"
METHODS = (SEPLLM, STREAMINGLLM, FULL)


@dataclass
class StreamingSettings:
    """One streaming method and its cache sizes (upstream names)."""

    method: str = SEPLLM
    init_cache_size: int = 4
    sep_cache_size: int = 64
    local_size: int = 224
    cache_size: int = 324
    enable_pos_shift: bool = True
    shift_strategy: str = "evict"
    chunk_size: int = 1
    cuda_graphs: bool = True  # token mode: fixed-shape cache, each step replayed from a CUDA graph

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method {self.method!r} is unknown; choose one of {METHODS}")
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {self.chunk_size}")
        self.new_cache()  # validates the sizes now rather than at the first text

    def new_cache(self):
        """A fresh cache for this method (None for the full-attention baseline's DynamicCache)."""
        if self.method == FULL:
            return DynamicCache()
        kw = dict(pos_shift=self.enable_pos_shift, shift_strategy=self.shift_strategy, static=self.static_cache)
        if self.method == STREAMINGLLM:
            return SepCache(self.init_cache_size, 0, self.local_size, self.cache_size, policy=STREAMINGLLM, **kw)
        return SepCache(self.init_cache_size, self.sep_cache_size, self.local_size, self.cache_size, **kw)

    @property
    def static_cache(self) -> bool:
        """Token mode with the fixed-shape cache (the "read" shift strategy needs the dynamic one)."""
        return self.chunk_size == 1 and self.cuda_graphs and self.shift_strategy == "evict"


def prepare_model(model, settings: StreamingSettings, *, separator_ids=None, tokenizer=None):
    """Install the SepLLM runtime (needed by SepCache) unless this is the full-attention baseline."""
    if settings.method == FULL:
        return None
    installed = getattr(model, "_sepllm_runtime", None)
    if installed is not None:
        # A converted SepLLM checkpoint (sepllm_gpt_neox / sepllm_llama) carries its training's runtime
        # and separators; the runtime serves a SepCache as it serves the mask.
        if separator_ids is not None:
            installed.separator_ids = [int(i) for i in separator_ids]
        return installed
    kw = {"separator_token_ids": separator_ids} if separator_ids is not None else {}
    return apply_sepllm(model, tokenizer=tokenizer, **kw)


@dataclass
class StepResult:
    nll: torch.Tensor  # [k] negative log-likelihoods of the tokens predicted in this forward
    tokens_done: int


@torch.no_grad()
def stream_text(model, ids: torch.Tensor, cache, chunk_size: int, max_tokens: Optional[int] = None,
                labels: Optional[torch.Tensor] = None) -> Iterator[StepResult]:
    """Feed one text (1-D token ids) through `model` with `cache`; yields the NLL of each predicted token.

    The last token is never fed (it has no label), as upstream does. With `labels` (one per id) every
    id is fed and predicts its label (a stream of several texts, see `evaluate_stream`).
    """
    if labels is None:
        ids, labels = ids.view(-1)[:-1], ids.view(-1)[1:]
    ids, labels = ids.view(1, -1).to(model.device), labels.view(-1).to(model.device)
    n_pred = ids.shape[1]
    if max_tokens is not None:
        n_pred = min(n_pred, max_tokens)
    done = 0
    graphed = GraphedTokenStep(model, cache) if isinstance(cache, SepCache) and cache.static else None
    while done < n_pred:
        k = min(chunk_size, n_pred - done)
        inp = ids[:, done:done + k]
        if graphed is not None:
            logits = graphed(inp)[0].float()
        else:
            logits = model(inp, past_key_values=cache, use_cache=True).logits[0].float()
        nll = F.cross_entropy(logits, labels[done:done + k], reduction="none")
        done += k
        yield StepResult(nll, done)


def _max_entries(cache) -> int:
    """The most entries the cache held after any forward pass so far (a DynamicCache only grows)."""
    return cache.core.max_held() if isinstance(cache, SepCache) else cache.get_seq_length()


@dataclass
class StreamReport:
    nlls: list[float]
    seconds: float
    peak_memory: Optional[int]
    max_entries: int
    peak_memory_at: dict[int, int] = field(default_factory=dict)  # tokens read -> peak bytes so far (CUDA)

    @property
    def ppl(self) -> float:
        return math.exp(sum(self.nlls) / max(1, len(self.nlls)))

    @property
    def tokens_per_second(self) -> float:
        return len(self.nlls) / max(self.seconds, 1e-9)


def evaluate_stream(model, texts: Iterable[torch.Tensor], settings: StreamingSettings, *, num_eval_tokens: Optional[int] = None,
                    concat: bool = False, on_step: Optional[Callable[[StepResult, float, int], None]] = None,
                    memory_marks: Iterable[int] = (10_000, 100_000, 500_000, 1_000_000)) -> StreamReport:
    """Stream `texts` (token id tensors) until num_eval_tokens predictions; a new cache per text
    unless `concat`. With `concat` the cache carries over from text to text, as in upstream's
    evaluation: each text's tokens but its last are fed, and each predicts the next token of its own
    text (a text's first token is fed, never predicted from the previous text). On CUDA the peak
    memory is also recorded when the stream passes each of `memory_marks` tokens. About once a
    second `on_step(last step, seconds so far, most cache entries held)` reports progress."""
    streams: Iterable[tuple[torch.Tensor, Optional[torch.Tensor]]] = ((t, None) for t in texts)
    if concat:
        kept = [t.view(-1) for t in texts if t.numel() > 1]
        streams = [(torch.cat([t[:-1] for t in kept]), torch.cat([t[1:] for t in kept]))] if kept else []
    nlls: list[float] = []
    pending: list[torch.Tensor] = []
    max_entries = 0
    cuda = torch.cuda.is_available() and next(model.parameters()).is_cuda
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    marks = sorted(memory_marks) if cuda else []
    peak_at: dict[int, int] = {}
    done_before = 0  # predictions of the texts finished earlier
    start = time.perf_counter()
    last_flush = start
    for ids, labels in streams:
        if num_eval_tokens is not None and len(nlls) + sum(p.numel() for p in pending) >= num_eval_tokens:
            break
        cache = settings.new_cache()
        left = None if num_eval_tokens is None else num_eval_tokens - len(nlls) - sum(p.numel() for p in pending)
        for step in stream_text(model, ids, cache, settings.chunk_size, left, labels=labels):
            pending.append(step.nll)
            while marks and done_before + step.tokens_done >= marks[0]:
                peak_at[marks.pop(0)] = torch.cuda.max_memory_allocated()  # host-side allocator statistic: no sync
            now = time.perf_counter()
            if now - last_flush > 1.0:  # syncing with the device once a second keeps token mode fast
                nlls.extend(torch.cat(pending).tolist())
                pending = []
                last_flush = now
                if on_step is not None:
                    on_step(StepResult(torch.tensor(nlls[-1:]), len(nlls)), now - start, max(max_entries, _max_entries(cache)))
        max_entries = max(max_entries, _max_entries(cache))
        done_before = len(nlls) + sum(p.numel() for p in pending)
    if pending:
        nlls.extend(torch.cat(pending).tolist())
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() if cuda else None
    return StreamReport(nlls, seconds, peak, max_entries, peak_at)
