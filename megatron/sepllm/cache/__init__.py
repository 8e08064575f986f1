"""The SepLLM / StreamingLLM KV cache: one mechanism for SepCache (transformers), streaming
perplexity and generation with our own models."""
from megatron.sepllm.cache.budget import SEPLLM, STREAMINGLLM, CacheBudget
from megatron.sepllm.cache.kv_cache import SepKVCache
from megatron.sepllm.cache.planner import ChunkPlan, SlotLayout, compress_rows, plan_chunk
from megatron.sepllm.cache.rotary import RotarySpec, rotate_by

__all__ = [
    "SEPLLM", "STREAMINGLLM", "CacheBudget", "SepKVCache", "ChunkPlan", "SlotLayout",
    "compress_rows", "plan_chunk", "RotarySpec", "rotate_by",
]
