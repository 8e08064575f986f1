"""Training-free SepLLM for transformers causal LMs (Llama, Qwen2, Mistral, GPT-NeoX).

    from megatron.sepllm.hf import apply_sepllm, SepCache
    runtime = apply_sepllm(model, "llama3_sepllm_a3_n256.yml", tokenizer=tok)   # or mode="sepllm", ...
    model(**batch)                                   # mask mode: SepLLM mask, full KV in memory
    model.generate(**batch, past_key_values=SepCache(4, 64, 256, 512))   # real KV savings
    runtime.kv_report(); runtime.remove()
"""
from megatron.sepllm.hf.apply import apply_sepllm, remove_sepllm
from megatron.sepllm.hf.config import build_sepllm_args, load_sepllm_yaml
from megatron.sepllm.hf.runtime import SepLLMRuntime
from megatron.sepllm.hf.sepcache import SepCache

__all__ = ["apply_sepllm", "remove_sepllm", "build_sepllm_args", "load_sepllm_yaml", "SepLLMRuntime", "SepCache"]
