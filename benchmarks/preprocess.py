#!/usr/bin/env python3
"""Preprocessing throughput against the tokenizer's own batch-encoding speed, on the same cores.

  python benchmarks/preprocess.py [--input ../shared/data/pg19-test] [--repeats 3] [--append-results]

Each measurement runs in a fresh process, so all start equally cold, and the runs alternate so
that background load hits them alike:
  encode_batch       tokenizers' Tokenizer.encode_batch over all documents (the reference)
  encode_batch_fast  the same without offsets (what the tool calls)
  end-to-end         `tools/preprocess_data.py` as a user runs it, wall clock from process start
                     to exit: interpreter start, imports, reading, tokenizing, writing .bin/.idx
The tool's own pipeline time (its summary, without start-up) is shown too. Reported: medians.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

ENCODE = r"""
import glob, json, os, sys, time
from tokenizers import Tokenizer
tok = Tokenizer.from_file(sys.argv[1])
paths = sorted(glob.glob(os.path.join(sys.argv[2], "*.txt")))
texts = [open(p, encoding="utf-8").read() for p in paths]
fn = getattr(tok, sys.argv[3])
t = time.perf_counter()
encs = fn(texts)
dt = time.perf_counter() - t
print(json.dumps({"tokens": sum(len(e.ids) for e in encs), "seconds": dt, "docs": len(texts)}))
"""


def default_input() -> str:
    for root in (REPO.parent / "shared", REPO / "shared"):
        if (root / "data" / "pg19-test").is_dir():
            return str(root / "data" / "pg19-test")
    return str(REPO / "data" / "demo")


def run_encode(tokenizer: str, folder: str, method: str, env: dict) -> dict:
    out = subprocess.run([sys.executable, "-c", ENCODE, tokenizer, folder, method], capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_tool(tokenizer: str, folder: str, workers: int, env: dict) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, str(REPO / "tools" / "preprocess_data.py"), "--input", folder, "--output-prefix", f"{tmp}/bench",
               "--tokenizer-type", "HFTokenizer", "--vocab-file", tokenizer, "--append-eod", "--workers", str(workers), "--no-progress"]
        t = time.perf_counter()
        out = subprocess.run(cmd, capture_output=True, text=True, env=env)
        wall = time.perf_counter() - t
    if out.returncode != 0:
        raise RuntimeError(out.stderr)
    tokens = int(re.search(r"tokens: +([\d,]+)", out.stdout).group(1).replace(",", ""))
    docs = int(re.search(r"documents: +([\d,]+)", out.stdout).group(1).replace(",", ""))
    pipeline = float(re.search(r"seconds: +([\d.]+)", out.stdout).group(1))
    # The tool counts the appended EOD tokens; the reference does not produce them.
    return {"tokens": tokens - docs, "seconds": wall, "pipeline_seconds": pipeline, "docs": docs}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", default=default_input(), help="Folder of .txt documents (default: PG19 test books from ../shared).")
    p.add_argument("--tokenizer", default=str(REPO / "data" / "demo" / "gpt-neox-20b-tokenizer.json"))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workers", type=int, default=os.cpu_count(), help="Tokenizer threads for all measurements.")
    p.add_argument("--append-results", action="store_true", help="Append the table to benchmarks/RESULTS.md.")
    args = p.parse_args(argv)
    env = dict(os.environ, RAYON_NUM_THREADS=str(args.workers))
    runs: dict[str, list[dict]] = {"encode_batch": [], "encode_batch_fast": [], "end-to-end": []}
    loads = []
    for _ in range(args.repeats):
        loads.append(os.getloadavg()[0])
        runs["encode_batch"].append(run_encode(args.tokenizer, args.input, "encode_batch", env))
        runs["end-to-end"].append(run_tool(args.tokenizer, args.input, args.workers, env))
        runs["encode_batch_fast"].append(run_encode(args.tokenizer, args.input, "encode_batch_fast", env))

    def rate(r):
        return r["tokens"] / r["seconds"] / 1e6

    med = {k: statistics.median(rate(r) for r in v) for k, v in runs.items()}
    pipe = statistics.median(r["tokens"] / r["pipeline_seconds"] / 1e6 for r in runs["end-to-end"])
    tokens = runs["encode_batch"][0]["tokens"]
    assert all(r["tokens"] == tokens for v in runs.values() for r in v), "the runs tokenized different token counts"
    cpu = _cpu_name()
    lines = [
        f"### Preprocessing throughput ({datetime.date.today().isoformat()})",
        "",
        f"- machine: {platform.node()}, {os.cpu_count()} CPU cores ({cpu}), Python {platform.python_version()}; "
        f"tokenizer threads: {args.workers}; 1-min load average at the start of each repeat: {', '.join(f'{x:.1f}' for x in loads)}",
        f"- data: {runs['encode_batch'][0]['docs']} documents from `{_short(args.input)}`, {tokens:,} tokens (GPT-NeoX-20B tokenizer)",
        f"- command: `python benchmarks/preprocess.py --repeats {args.repeats} --workers {args.workers}`; medians of {args.repeats} fresh processes each",
        "",
        "| measurement | M tokens/s | vs encode_batch |",
        "|---|---:|---:|",
        f"| tokenizer `encode_batch` (reference) | {med['encode_batch']:.3f} | 100% |",
        f"| tokenizer `encode_batch_fast` | {med['encode_batch_fast']:.3f} | {100 * med['encode_batch_fast'] / med['encode_batch']:.0f}% |",
        f"| `tools/preprocess_data.py`, end to end (wall clock incl. start-up) | {med['end-to-end']:.3f} | {100 * med['end-to-end'] / med['encode_batch']:.0f}% |",
        f"| `tools/preprocess_data.py`, pipeline only (its summary) | {pipe:.3f} | {100 * pipe / med['encode_batch']:.0f}% |",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.append_results:
        results = REPO / "benchmarks" / "RESULTS.md"
        if not results.exists():
            results.write_text("# Benchmark results\n\n")
        with open(results, "a", encoding="utf-8") as f:
            f.write("\n" + text)
    return 0


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _short(path: str) -> str:
    try:
        return os.path.relpath(path, REPO)
    except ValueError:
        return path


if __name__ == "__main__":
    sys.exit(main())
