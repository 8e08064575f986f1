#!/usr/bin/env python
"""Decoding speed and memory: SepCache versus DynamicCache after a long context (random weights).

    python benchmarks/sepcache_decode.py                      # SmolLM2-135M shape, 8k and 32k, batch 1 and 16
    python benchmarks/sepcache_decode.py --tiny --contexts 256 --batches 1 2 --new_tokens 8   # CPU smoke run

For each (context, batch, cache): the context is prefilled in chunks (--prefill_chunk), then
--new_tokens greedy decoding steps are timed. Reports decoding tokens/s (batch x steps / time),
peak memory while decoding (CUDA only), and cache entries per layer. --results appends the rows
to a markdown file (benchmarks/RESULTS.md).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM  # noqa: E402

from megatron.sepllm.hf import SepCache, apply_sepllm, remove_sepllm  # noqa: E402

SMOLLM2_135M = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                    num_key_value_heads=3, max_position_embeddings=40960, rope_theta=100000.0, tie_word_embeddings=True)
TINY = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=4096)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--contexts", type=int, nargs="+", default=[8192, 32768])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    p.add_argument("--new_tokens", type=int, default=128)
    p.add_argument("--prefill_chunk", type=int, default=2048)
    p.add_argument("--sepcache", type=int, nargs=4, default=[4, 64, 256, 512], metavar=("A", "S", "W", "C"))
    p.add_argument("--tiny", action="store_true", help="a 2-layer model (CPU smoke test)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="bfloat16" if torch.cuda.is_available() else "float32")
    p.add_argument("--results", default=None, help="append markdown rows to this file")
    return p.parse_args(argv)


def _sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@torch.no_grad()
def run_one(model, cache, context: int, batch: int, args) -> dict:
    device = args.device
    g = torch.Generator(device="cpu").manual_seed(0)
    # Random ids with separators sprinkled in (ids 0..9 play the separators), like text.
    ids = torch.randint(10, model.config.vocab_size, (batch, context), generator=g)
    ids[torch.rand(batch, context, generator=g) < 0.12] = 3
    ids = ids.to(device)
    for s in range(0, context, args.prefill_chunk):
        out = model(ids[:, s:s + args.prefill_chunk], past_key_values=cache, use_cache=True)
    nxt = out.logits[:, -1:].argmax(-1)
    _sync(device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(args.new_tokens):
        out = model(nxt, past_key_values=cache, use_cache=True)
        nxt = out.logits[:, -1:].argmax(-1)
    _sync(device)
    seconds = time.perf_counter() - start
    entries = cache.core.held(0) if isinstance(cache, SepCache) else cache.get_seq_length()
    return {
        "context": context, "batch": batch, "cache": type(cache).__name__, "tokens_per_second": batch * args.new_tokens / seconds,
        "ms_per_step": 1000 * seconds / args.new_tokens, "cache_entries": entries,
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None,
    }


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    torch.manual_seed(0)
    cfg = LlamaConfig(**(TINY if args.tiny else SMOLLM2_135M), attn_implementation="sdpa")
    model = LlamaForCausalLM(cfg).to(device=args.device, dtype=getattr(torch, args.dtype)).eval()
    rows = []
    for context in args.contexts:
        for batch in args.batches:
            for kind in ("DynamicCache", "SepCache"):
                if kind == "SepCache":
                    apply_sepllm(model, separator_token_ids=[3])
                    cache = SepCache(*args.sepcache)
                else:
                    remove_sepllm(model)
                    cache = DynamicCache()
                try:
                    row = run_one(model, cache, context, batch, args)
                except torch.cuda.OutOfMemoryError:
                    row = {"context": context, "batch": batch, "cache": kind, "error": "out of memory"}
                del cache
                if args.device.startswith("cuda"):
                    torch.cuda.empty_cache()
                print(json.dumps(row), flush=True)
                rows.append(row)
    if args.results:
        a, s, w, c = args.sepcache
        lines = [f"\n### SepCache decoding ({'tiny' if args.tiny else 'SmolLM2-135M shape'}, random weights, {args.dtype}, "
                 f"{torch.cuda.get_device_name() if args.device.startswith('cuda') else 'CPU'}; SepCache a={a} s={s} w={w} c={c})\n",
                 "| context | batch | cache | tokens/s | ms/step | peak GiB | entries/layer |", "|---|---|---|---|---|---|---|"]
        for r in rows:
            if "error" in r:
                lines.append(f"| {r['context']} | {r['batch']} | {r['cache']} | {r['error']} | | | |")
                continue
            mem = "-" if r["peak_memory_gib"] is None else f"{r['peak_memory_gib']:.2f}"
            lines.append(f"| {r['context']} | {r['batch']} | {r['cache']} | {r['tokens_per_second']:.1f} | {r['ms_per_step']:.1f} | {mem} | {r['cache_entries']} |")
        with open(args.results, "a") as f:
            f.write("\n".join(lines) + "\n")
    return rows


if __name__ == "__main__":
    main()
