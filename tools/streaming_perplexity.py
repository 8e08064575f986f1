#!/usr/bin/env python
"""Streaming perplexity of SepLLM / StreamingLLM / full attention (upstream Streaming-SepLLM's options).

    python tools/streaming_perplexity.py --model_name_or_path MODEL_DIR_OR.gguf \
        --dataset_name pg19 --data_path ../shared/data/pg19-test --num_eval_tokens 20000 \
        --enable_SepLLM True --init_cache_size 4 --sep_cache_size 32 --local_size 224 --cache_size 324 \
        --enable_pos_shift True --chunk_size 64 --output_dir runs/stream/sepllm

Writes OUTPUT_DIR/log.txt (one NLL per predicted token, as upstream), ppl.txt, summary.json (perplexity
at 20k/100k/500k/1M tokens, tokens/s, peak memory, cache entries) and running_ppl.png (with the runs
given in --plot_with overlaid). --enable_kv_cache_manager False runs the full-attention baseline.
Each text starts with a fresh cache unless --concat_texts True (upstream never resets).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from megatron.inference.streaming import FULL, StreamingSettings, evaluate_stream, prepare_model  # noqa: E402
from megatron.inference.streaming_data import iter_texts  # noqa: E402
from megatron.inference.streaming_model import DTYPES, load_model_and_tokenizer  # noqa: E402
from megatron.inference.streaming_plot import plot_running_ppl, running_ppl  # noqa: E402
from megatron.sepllm.cache.budget import SEPLLM, STREAMINGLLM  # noqa: E402

MILESTONES = (20_000, 100_000, 500_000, 1_000_000, 4_194_304)


def str2bool(v: str) -> bool:
    if v.lower() in ("yes", "true", "t", "y", "1"):
        return True
    if v.lower() in ("no", "false", "f", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (True/False), got {v!r}")


def _count_or_all(v: str):
    if v.lower() == "all":
        return None
    try:
        return int(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of tokens or 'all', got {v!r}") from None


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_name_or_path", required=True, help="transformers model directory or .gguf file")
    p.add_argument("--output_dir", default="runs/streaming", help="where log.txt, ppl.txt, summary.json and the plot go")
    p.add_argument("--dataset_name", default="pg19", choices=["pg19", "text"], help="pg19: a directory of books; text: any .txt/.jsonl files")
    p.add_argument("--data_path", nargs="+", default=None, help="files or directories (default for pg19: ../shared/data/pg19-test)")
    p.add_argument("--jsonl_key", default="text", help="field holding the text in .jsonl files")
    p.add_argument("--num_samples", type=int, default=None, help="at most this many texts")
    p.add_argument("--num_eval_tokens", type=_count_or_all, default=20 * 1024,
                   help="stop after this many predicted tokens ('all': stream every text)")
    p.add_argument("--enable_kv_cache_manager", type=str2bool, default=True, help="False: full-attention baseline")
    p.add_argument("--enable_SepLLM", type=str2bool, default=True)
    p.add_argument("--enable_StreamingLLM", type=str2bool, default=False)
    p.add_argument("--cache_size", type=int, default=324, help="c: the whole cache")
    p.add_argument("--init_cache_size", type=int, default=4, help="a: initial tokens kept")
    p.add_argument("--sep_cache_size", type=int, default=64, help="s: separators kept (SepLLM)")
    p.add_argument("--local_size", type=int, default=224, help="w: local window (StreamingLLM: must be cache_size - init_cache_size)")
    p.add_argument("--enable_pos_shift", type=str2bool, default=True, help="positions inside the cache (False: stream positions)")
    p.add_argument("--shift_strategy", default="evict", choices=["evict", "read"], help="rotate keys when evicted, or on every read")
    p.add_argument("--chunk_size", type=int, default=1, help="tokens per forward pass (1 = upstream token-by-token mode)")
    p.add_argument("--cuda_graphs", type=str2bool, default=True, help="token mode: fixed-shape cache replayed from a CUDA graph")
    p.add_argument("--concat_texts", type=str2bool, default=False, help="one stream over all texts (no cache reset)")
    p.add_argument("--separator_token_ids", type=int, nargs="+", default=None, help="default: from the tokenizer")
    p.add_argument("--device", default="cuda:0" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float16" if torch.cuda.is_available() else "float32", choices=sorted(DTYPES))
    p.add_argument("--plot_with", nargs="*", default=[], help="other output dirs whose log.txt to overlay on the plot")
    return p.parse_args(argv)


def settings_from_args(args) -> StreamingSettings:
    if not args.enable_kv_cache_manager:
        method = FULL
    elif args.enable_SepLLM and args.enable_StreamingLLM:
        raise ValueError("choose one of --enable_SepLLM and --enable_StreamingLLM, not both")
    elif args.enable_StreamingLLM:
        method = STREAMINGLLM
    elif args.enable_SepLLM:
        method = SEPLLM
    else:
        raise ValueError("--enable_kv_cache_manager True needs --enable_SepLLM True or --enable_StreamingLLM True")
    return StreamingSettings(method, args.init_cache_size, args.sep_cache_size if method == SEPLLM else 0, args.local_size,
                             args.cache_size, args.enable_pos_shift, args.shift_strategy, args.chunk_size, args.cuda_graphs)


def default_data(dataset: str) -> list[str]:
    if dataset != "pg19":
        raise ValueError("--dataset_name text needs --data_path")
    root = Path(__file__).resolve().parents[1]
    for cand in (root.parent / "shared" / "data" / "pg19-test", root / "shared" / "data" / "pg19-test"):
        if cand.is_dir():
            return [str(cand)]
    raise FileNotFoundError("PG19 books not found next to the repository; pass --data_path")


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def main(argv=None) -> dict:
    args = parse_args(argv)
    settings = settings_from_args(args)
    # Inputs are checked before the model loads and the stream runs, not after.
    if args.num_eval_tokens is not None and args.num_eval_tokens < 1:
        raise ValueError(f"--num_eval_tokens must be >= 1 (or 'all' to stream every text), got {args.num_eval_tokens}")
    if args.num_samples is not None and args.num_samples < 1:
        raise ValueError(f"--num_samples must be >= 1 (leave it out to read every text), got {args.num_samples}")
    paths = args.data_path or default_data(args.dataset_name)
    missing = [p for p in paths if not Path(p).exists()]
    if missing:
        raise FileNotFoundError(f"--data_path {' '.join(map(str, missing))} does not exist")
    for other in args.plot_with:
        if not (Path(other) / "log.txt").is_file():
            raise FileNotFoundError(f"--plot_with {other}: no log.txt there (pass output dirs of earlier runs)")
    model, tok = load_model_and_tokenizer(args.model_name_or_path, dtype=args.dtype, device=args.device)
    prepare_model(model, settings, separator_ids=args.separator_token_ids, tokenizer=tok)

    def texts():
        for n, text in enumerate(iter_texts(paths, args.jsonl_key)):
            if args.num_samples is not None and n >= args.num_samples:
                return
            yield tok(text, return_tensors="pt").input_ids[0]

    bar = tqdm(total=args.num_eval_tokens, unit="tok", dynamic_ncols=True)

    def progress(step, elapsed, cache_entries):
        bar.n = step.tokens_done
        bar.set_postfix(nll=f"{step.nll[-1].item():.2f}", tok_s=f"{step.tokens_done / max(elapsed, 1e-9):.0f}", cache=cache_entries)
        bar.refresh()

    if args.concat_texts:
        # One stream, cut as soon as it is long enough (tokenizing every book first would be slow).
        src, total = [], 0
        for ids in texts():
            src.append(ids)
            total += ids.numel()
            if args.num_eval_tokens is not None and total > args.num_eval_tokens:
                break
    else:
        src = texts()
    report = evaluate_stream(model, src, settings, num_eval_tokens=args.num_eval_tokens, concat=args.concat_texts, on_step=progress)
    bar.n = len(report.nlls)
    bar.close()
    if not report.nlls:  # a perplexity of no tokens would read as a perfect 1.0
        raise ValueError(f"no token was predicted: the texts in {' '.join(map(str, paths))} are empty or one token long")
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "log.txt", "".join(f"{x}\n" for x in report.nlls))
    write_atomic(out / "ppl.txt", f"{report.ppl}\n")
    curve = running_ppl(report.nlls) if report.nlls else []
    summary = {
        "method": settings.method, "chunk_size": settings.chunk_size, "enable_pos_shift": settings.enable_pos_shift,
        "shift_strategy": settings.shift_strategy, "init_cache_size": settings.init_cache_size,
        "sep_cache_size": settings.sep_cache_size, "local_size": settings.local_size, "cache_size": settings.cache_size,
        "tokens": len(report.nlls), "ppl": report.ppl, "tokens_per_second": report.tokens_per_second,
        "seconds": report.seconds, "peak_memory_bytes": report.peak_memory, "max_cache_entries": report.max_entries,
        "peak_memory_bytes_at": {str(k): v for k, v in report.peak_memory_at.items()}, "cuda_graphs": settings.static_cache,
        "ppl_at": {str(m): float(curve[m - 1]) for m in MILESTONES if m <= len(report.nlls)},
    }
    write_atomic(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    curves = {out.name: report.nlls}
    for other in args.plot_with:
        curves[Path(other).name] = [float(x) for x in (Path(other) / "log.txt").read_text().split()]
    plot_running_ppl(curves, out / "running_ppl.png")
    print(f"\nOverall Perplexity (PPL): {report.ppl:.4f}  tokens: {len(report.nlls)}  tokens/s: {report.tokens_per_second:.1f}  "
          f"max cache entries: {report.max_entries}  peak memory: {report.peak_memory}")
    return summary


if __name__ == "__main__":
    from megatron.checkpointing.checkpoint import CheckpointError

    try:
        main()
    except (CheckpointError, ValueError, OSError) as exc:  # bad input: a message, not a traceback
        sys.exit(f"streaming_perplexity: {exc}")
