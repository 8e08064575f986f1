"""End-to-end training step: Pythia-160M-shaped GPTModel, SepLLM (kernel) versus vanilla full attention.

    python benchmarks/train_step.py --out results_dir           # on the GPU, carry .devcarry
    python benchmarks/train_step.py --seqs 2048 --micro-batch 8 --window 64
    python benchmarks/train_step.py --compile --out results_dir # blocks under megatron.parallel.compile

One step = forward, cross-entropy loss, backward, fused AdamW step, on bf16 weights; every step
gets a new PG19 batch (tensors never seen before), so the per-batch SepLLM plan and kernel layout
are in the time. Vanilla runs with each SDPA backend (cuDNN, FlashAttention-2) pinned and keeps
the faster; "sepllm-masked" is the reference path (dense mask + SDPA) for comparison at 2k.
With --compile every block is compiled as the trainer compiles it (compile_model: causal SDPA or
the Sep-Attention kernel traced into one graph per block); compilation happens in the warm-up steps.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from megatron.model.gpt_model import GPTModel  # noqa: E402
from megatron.neox_arguments.model import ModelArgs  # noqa: E402
from megatron.neox_arguments.sepllm import SepLLMArgs  # noqa: E402

TOKENS = REPO / ".devcarry" / "pg19_neox20b.npy"
VOCAB = 50304  # GPT-NeoX-20B tokenizer padded to a multiple of 128


def pythia_160m(seq: int, layers: int, hidden: int, heads: int) -> ModelArgs:
    return ModelArgs(
        num_layers=layers, hidden_size=hidden, num_attention_heads=heads, seq_length=seq,
        max_position_embeddings=seq, pos_emb="rotary", rotary_pct=0.25, gpt_j_residual=True,
        no_weight_tying=True, norm="layernorm", activation="gelu",
    )


def batches(seq: int, micro_batch: int, count: int, device) -> list[torch.Tensor]:
    if not TOKENS.exists():
        raise SystemExit(f"{TOKENS} is missing: run benchmarks/sep_attention.py --prepare-tokens and carry .devcarry")
    stream = torch.from_numpy(np.load(TOKENS).astype(np.int64))
    need = micro_batch * (seq + 1)
    starts = torch.linspace(0, len(stream) - need, count).long()
    return [stream[s : s + need].view(micro_batch, seq + 1).to(device) for s in starts.tolist()]


def time_steps(model, data, steps: int, warmup: int, backend) -> float:
    from torch.nn.attention import sdpa_kernel

    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=model.embedding.word_embeddings.weight.is_cuda)
    cuda = data[0].is_cuda
    times = []
    for i in range(warmup + steps):
        ids = data[i % len(data)].clone()  # a tensor the model has never seen: the plan is rebuilt
        inp, labels = ids[:, :-1], ids[:, 1:]
        wall = time.perf_counter()
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
        with sdpa_kernel([backend]):
            logits = model(inp)
            loss = F.cross_entropy(logits.float().view(-1, logits.shape[-1]), labels.reshape(-1))
            loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if cuda:
            end.record()
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(start.elapsed_time(end) if cuda else (time.perf_counter() - wall) * 1e3)
    if not torch.isfinite(loss):
        raise RuntimeError(f"non-finite loss {float(loss)}")
    return float(np.median(times)) if times else float("nan")


def main(argv=None) -> None:
    from torch.nn.attention import SDPBackend

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seqs", type=int, nargs="+", default=[2048, 8192])
    ap.add_argument("--micro-batch", type=int, nargs="+", default=[8, 2], help="one per --seqs entry")
    ap.add_argument("--window", type=int, nargs="+", default=[64, 256], help="SepLLM n, one per --seqs entry")
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--masked-up-to", type=int, default=2048, help="also time the masked reference path up to this length")
    ap.add_argument("--configs", type=Path, help="best_configs.json of benchmarks/sep_attention.py --sweep")
    ap.add_argument("--compile", action="store_true", help="compile each block as the trainer does (compile_model)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    if args.configs:
        from megatron.sepllm.kernel.configs import load_overrides

        load_overrides(args.configs)
    if not (len(args.seqs) == len(args.micro_batch) == len(args.window)):
        raise SystemExit("--seqs, --micro-batch and --window need one value each per sequence length")

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    full_backends = [("cudnn", SDPBackend.CUDNN_ATTENTION), ("flash2", SDPBackend.FLASH_ATTENTION)] \
        if device.type == "cuda" else [("math", SDPBackend.MATH)]
    rows = []
    for seq, mb, n in zip(args.seqs, args.micro_batch, args.window):
        data = batches(seq, mb, 4, device)
        margs = pythia_160m(seq, args.layers, args.hidden, args.heads)
        runs = [(f"vanilla ({name})", SepLLMArgs(USE_ORIGINAL_FULL_ATTEN=True), backend) for name, backend in full_backends]
        kernel = SepLLMArgs(separator_token_ids="gpt-neox-20b", prefill_local_window_size=n, USE_SEP_ATTN_KERNEL_ACCELERATOR=True)
        runs.append((f"sepllm n={n} (kernel)", kernel, full_backends[0][1]))
        if seq <= args.masked_up_to and not args.compile:  # a masked block breaks its graph: eager only
            masked = SepLLMArgs(separator_token_ids="gpt-neox-20b", prefill_local_window_size=n,
                                USE_SEP_ATTN_KERNEL_ACCELERATOR=False)
            runs.append((f"sepllm n={n} (masked SDPA)", masked, SDPBackend.EFFICIENT_ATTENTION if device.type == "cuda" else SDPBackend.MATH))
        for name, sep, backend in runs:
            torch.manual_seed(0)
            model = GPTModel(margs, sep, VOCAB, device=device, dtype=dtype)
            if args.compile:
                from torch import _dynamo

                from megatron.parallel.compile import compile_model

                _dynamo.reset()  # graphs traced under one pinned SDPA backend must not serve the next run
                compile_model(model)
            try:
                ms = time_steps(model, data, args.steps, args.warmup, backend)
            except (RuntimeError, torch.cuda.OutOfMemoryError) as exc:
                print(f"seq {seq} {name}: failed ({str(exc).splitlines()[0][:150]})", flush=True)
                ms = float("nan")
            rows.append(dict(seq=seq, micro_batch=mb, run=name, step_ms=ms, tokens_per_s=mb * seq / ms * 1e3))
            print(f"seq {seq} mb {mb} {name}: {ms:.1f} ms/step", flush=True)
            del model
            if device.type == "cuda":
                torch.cuda.empty_cache()
    mode = "compiled blocks" if args.compile else "eager"
    lines = [f"Model: {mode}.", "", "| seq | micro-batch | run | step ms | tokens/s | speedup vs fastest vanilla |",
             "|---|---|---|---|---|---|"]
    for seq in args.seqs:
        group = [r for r in rows if r["seq"] == seq]
        vanilla = min((r["step_ms"] for r in group if r["run"].startswith("vanilla")), default=float("nan"))
        for r in group:
            lines.append(f"| {seq} | {r['micro_batch']} | {r['run']} | {r['step_ms']:.1f} | {r['tokens_per_s']:.0f} | "
                         f"{vanilla / r['step_ms']:.2f}x |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "train_step.md").write_text(text + "\n")
        (args.out / "train_step.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
