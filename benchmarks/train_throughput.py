"""Training throughput: this framework (DeepSpeed engine, parallelize(), SepLLM) against a minimal PyTorch step.

    python benchmarks/train_throughput.py                                  # one GPU: every row below
    torchrun --nproc_per_node 8 benchmarks/train_throughput.py             # data parallel over 8 GPUs
    python benchmarks/train_throughput.py --models 160M --seqs 2048 --json out.json
    python benchmarks/train_throughput.py --toy                            # tiny shape, runs on CPU
    python benchmarks/train_throughput.py --out DIR    # DIR/throughput.md and .json, rewritten after every row

Rows: Pythia 160M / 410M / 1.4B shapes (configs/pythia) x sequence 2048 / 8192 x
  framework-vanilla  GPTModel with full causal attention, through the DeepSpeed engine (ZeRO-1; bf16 by
                     torch_autocast over fp32 parameters, or with --deepspeed-bf16 DeepSpeed's bf16
                     parameters and its BF16_Optimizer)
  framework-sepllm   the same with SepLLM (--sepllm-config, default configs/sepllm/n256.yml: kernel on)
  baseline           one file of plain PyTorch: the same Pythia block (parallel residual, 25% rotary,
                     LayerNorm, GELU, untied embeddings), bf16 autocast, cuDNN attention,
                     torch.compile, fused AdamW (DDP under torchrun)
Every step reads a fresh micro-batch of --tokens-per-micro-batch tokens (random ids with
--separator-rate separator tokens, or a token file), so SepLLM rebuilds its plan per batch as in
training. All rows run under the same SDPA backend choice (cuDNN, then FlashAttention), so vanilla
differs from the baseline by the framework, not by the attention kernel.

Columns: tokens/s over all ranks; model TFLOP/s per GPU counts 6 FLOPs per parameter per token plus
attention over the share of the attention map that is computed (the trainer's convention,
megatron/training/flops.py), so SepLLM rows are not credited for skipped work. MFU is given twice:
against the bf16 matrix-multiply rate measured at the start of the same run (the ceiling this GPU
reaches in practice) and against the datasheet's dense bf16 peak. "vs base" is a framework row's
throughput over the baseline's of the same shape, "vs van" SepLLM's over vanilla's.

On one GPU every row runs in a fresh process (--isolate, the default there), so no row inherits
memory, compiled graphs or DeepSpeed state from the rows before it; compiled graphs are shared
through inductor's on-disk cache only. A row that runs out of memory is retried at half the
micro-batch (then reported as such); --time-budget-s skips the rows that would start after the
budget, so a run cut short still leaves every finished row in --out.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Optional
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from megatron.parallel.distributed import prepare_accelerator_env  # noqa: E402

prepare_accelerator_env()

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

MODELS = {"160M": "configs/pythia/160M.yml", "410M": "configs/pythia/410M.yml", "1.4B": "configs/pythia/1.4B.yml"}
TOY = {"num_layers": 2, "hidden_size": 64, "num_attention_heads": 4, "attention_config": [[["global"], 2]],
       "prefill_local_window_size": 32}
VOCAB = 50304  # the GPT-NeoX-20B tokenizer's 50277 ids, padded to a multiple of 128


# ------------------------------------------------------------------------------ data


def separator_ids(sep_args) -> torch.Tensor:
    """The config's separators (the Pythia tokenizer's when it lists none, as the vanilla config does)."""
    from megatron.sepllm.mask import resolve_token_ids

    ids = resolve_token_ids(sep_args.separator_token_ids) or resolve_token_ids("pythia")
    return torch.tensor(sorted(ids), dtype=torch.long)


class Batches:
    """Fresh [micro, seq + 1] token tensors: random ids with separators at a given rate, or slices of a file."""

    def __init__(self, micro: int, seq: int, device, separators: torch.Tensor, rate: float, token_file: str | None,
                 seed: int) -> None:
        self.shape, self.device = (micro, seq + 1), device
        self.generator = torch.Generator().manual_seed(seed)
        self.separators, self.rate = separators, rate
        self.stream = None
        if token_file:
            import numpy as np

            self.stream = torch.from_numpy(np.load(token_file).astype("int64"))
            if self.stream.numel() < micro * (seq + 1):
                raise SystemExit(f"{token_file} holds {self.stream.numel()} tokens; a micro-batch needs {micro * (seq + 1)}")

    def __call__(self) -> torch.Tensor:
        g, n = self.generator, self.shape[0] * self.shape[1]
        if self.stream is not None:
            start = int(torch.randint(0, self.stream.numel() - n + 1, (1,), generator=g))
            tokens = self.stream[start : start + n].view(self.shape)
        else:
            tokens = torch.randint(0, 50277, self.shape, generator=g)
            is_sep = torch.rand(self.shape, generator=g) < self.rate
            picks = self.separators[torch.randint(0, len(self.separators), self.shape, generator=g)]
            tokens = torch.where(is_sep, picks, tokens)
        if self.device.type == "cuda":  # from pinned memory the copy queues behind the running step
            tokens = tokens.pin_memory()
        return tokens.to(self.device, non_blocking=True)


# ------------------------------------------------------------------------------ timing


def synchronize(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(step, steps: int, warmup: int, device) -> float:
    """Seconds per step, averaged over `steps` after `warmup` untimed ones."""
    for _ in range(warmup):
        step()
    synchronize(device)
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    return (time.perf_counter() - start) / steps


def matmul_ceiling(device, size: int = 8192, iters: int = 40) -> Optional[float]:
    """TFLOP/s of a bf16 size^3 matrix product on this GPU (random data), the practical MFU ceiling."""
    if device.type != "cuda":
        return None
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    for _ in range(5):
        torch.mm(a, b)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        torch.mm(a, b)
    end.record()
    torch.cuda.synchronize(device)
    seconds = start.elapsed_time(end) / 1e3
    del a, b
    torch.cuda.empty_cache()
    return 2 * size**3 * iters / seconds / 1e12


def attention_backends(device):
    """cuDNN attention first, FlashAttention next, for the baseline's rows (a no-op context on CPU).
    The framework's model makes the same choice itself (megatron.sepllm.attention.causal_backends)."""
    from contextlib import nullcontext

    if device.type != "cuda":
        return nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION],
                       set_priority=True)


# ------------------------------------------------------------------------------ this framework


def framework_args(model: str, seq: int, micro: int, attention: str, cli, extra: Optional[dict] = None):
    from megatron.neox_arguments import NeoXArgs

    files = [REPO / MODELS["160M" if model == "toy" else model]]
    files.append(REPO / ("configs/sepllm/vanilla.yml" if attention == "vanilla" else cli.sepllm_config))
    overrides = {
        "seq_length": seq, "max_position_embeddings": seq, "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": cli.grad_acc, "train_batch_size": None, "train_iters": 10**6,
        "lr_decay_iters": 10**6, "checkpoint_activations": cli.checkpoint_activations,
        "model_parallel_size": cli.model_parallel_size, "pipe_parallel_size": cli.pipe_parallel_size,
        "sequence_parallel": cli.sequence_parallel, "wall_clock_breakdown": False, "steps_per_print": 10**9,
        "zero_optimization": {"stage": 1}, "PRINT_KV_RATIO": False, "torch_compile": cli.compile,
        "torch_compile_mode": cli.compile_mode,
    }
    if cli.bf16:
        # torch_autocast runs without tensor or pipeline parallelism; those rows keep DeepSpeed's bf16.
        autocast = cli.torch_autocast and cli.model_parallel_size == 1 and cli.pipe_parallel_size <= 1
        overrides.update(precision="bfloat16", fp16=None, bf16={"enabled": True}, torch_autocast=autocast)
    else:
        overrides.update(precision="fp32", fp16=None, bf16=None)
    if model == "toy":
        overrides.update(TOY)
    overrides.update(extra or {})
    return NeoXArgs.from_files(files, overrides)


def build_framework(model: str, seq: int, micro: int, attention: str, cli, env, overrides: Optional[dict] = None):
    """(engine, parallel, step, args, info): the DeepSpeed engine over the parallelized GPTModel and
    one training step on fresh micro-batches, as the trainer runs it."""
    from megatron.data.batch import get_batch
    from megatron.model import GPTModel, count_parameters, padded_vocab_size
    from megatron.parallel.parallelize import parallelize
    from megatron.training.lr_schedule import AnnealingLR
    from megatron.training.optimizer import build_optimizer

    args = framework_args(model, seq, micro, attention, cli, overrides)
    torch.manual_seed(1234)
    vocab = padded_vocab_size(50277, args.model.make_vocab_size_divisible_by, args.parallel.model_parallel_size)
    # Initialised on the GPU where nothing is split (CPU initialisation of 1.4B weights takes ~15 s);
    # tensor and pipeline parallelism split a CPU-built model, as the trainer does.
    whole = cli.model_parallel_size == 1 and cli.pipe_parallel_size <= 1
    net = GPTModel(args.model, args.sepllm, vocab, device=env.device if whole else None)
    if args.training.checkpoint_activations:
        net.enable_activation_checkpointing(args.training.checkpoint_num_layers)
    info = dict(non_embedding=count_parameters(net, exclude_embeddings=True), layers=args.model.num_layers,
                hidden=args.model.hidden_size, vocab=vocab)
    parallel = parallelize(net, args, env.world_size, env.rank)
    optimizer = build_optimizer(parallel.module, args.optimizer.optimizer, args.optimizer.weight_decay, env.device)
    scheduler = AnnealingLR(optimizer, max_lr=args.optimizer.lr, min_lr=args.lr.min_lr, warmup=0.0,
                            decay_iters=10**6, style="cosine")
    engine = parallel.initialize(optimizer, scheduler, args.deepspeed_config(parallel.dp_size))
    batches = Batches(micro, seq, env.device, separator_ids(args.sepllm), cli.separator_rate, cli.token_file,
                      seed=1000 + parallel.dp_rank)

    def batch() -> dict:
        return get_batch(batches(), eod_id=0)

    def step() -> None:
        if parallel.pipelined:
            engine.train_batch(parallel.pipe_batches([batch() for _ in range(cli.grad_acc)]))
            return
        for _ in range(cli.grad_acc):
            b = batch()
            parallel.begin_micro_batch()
            logits = engine(b["input_ids"], position_ids=b["position_ids"], doc_ids=b["doc_ids"])
            engine.backward(parallel.lm_loss(logits, b["labels"], b["loss_mask"]))
            parallel.step(engine)

    step.batch = batch
    return engine, parallel, step, args, info


def run_framework(model: str, seq: int, micro: int, attention: str, cli, env) -> dict:
    from megatron.sepllm.mask import build_attention_plan, layer_kept_ratios

    engine, parallel, step, args, info = build_framework(model, seq, micro, attention, cli, env)
    # no backend pin here: the model picks its attention backends itself, as under train.py
    seconds = timed(step, cli.steps, cli.warmup, env.device)
    plan = build_attention_plan(step.batch()["input_ids"], args.sepllm, args.model.num_layers)
    kept = sum(r["attn_map_ratio"] for r in layer_kept_ratios(plan)) / args.model.num_layers
    tokens = micro * seq * cli.grad_acc * parallel.dp_size
    row = dict(impl=f"framework-{attention}", kept=kept, seconds=seconds, tokens=tokens, **info)
    engine.destroy()  # removes DeepSpeed's hooks and buffers, which would keep the model alive
    del engine, parallel, step
    return row


# ------------------------------------------------------------------------------ the minimal PyTorch baseline


class Block(nn.Module):
    """A Pythia block: x + attn(ln1(x)) + mlp(ln2(x)), rotary on the first quarter of each head."""

    def __init__(self, hidden: int, heads: int, rotary_dims: int) -> None:
        super().__init__()
        self.heads, self.rotary_dims = heads, rotary_dims
        self.ln1, self.ln2 = nn.LayerNorm(hidden), nn.LayerNorm(hidden)
        self.qkv, self.proj = nn.Linear(hidden, 3 * hidden), nn.Linear(hidden, hidden)
        self.fc1, self.fc2 = nn.Linear(hidden, 4 * hidden), nn.Linear(4 * hidden, hidden)

    def rotate(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        r = self.rotary_dims
        rot, rest = x[..., :r], x[..., r:]
        half1, half2 = rot.chunk(2, dim=-1)
        rotated = torch.cat((-half2, half1), dim=-1)
        return torch.cat((rot * cos + rotated * sin, rest), dim=-1)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, L, H = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(B, L, self.heads, 3, H // self.heads).permute(3, 0, 2, 1, 4)
        q, k = self.rotate(q, cos, sin), self.rotate(k, cos, sin)
        attn = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return x + self.proj(attn.transpose(1, 2).reshape(B, L, H)) + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class PythiaBaseline(nn.Module):
    def __init__(self, layers: int, hidden: int, heads: int, vocab: int, seq: int) -> None:
        super().__init__()
        head_dim = hidden // heads
        self.rotary_dims = head_dim // 4
        self.embed = nn.Embedding(vocab, hidden)
        self.blocks = nn.ModuleList(Block(hidden, heads, self.rotary_dims) for _ in range(layers))
        self.norm = nn.LayerNorm(hidden)
        self.out = nn.Linear(hidden, vocab, bias=False)
        inv_freq = 1.0 / (10000 ** (torch.arange(0, self.rotary_dims, 2).float() / self.rotary_dims))
        angles = torch.outer(torch.arange(seq).float(), inv_freq)
        angles = torch.cat((angles, angles), dim=-1)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids)
        cos, sin = self.cos[: ids.shape[1]], self.sin[: ids.shape[1]]
        for block in self.blocks:
            x = block(x, cos, sin)
        return self.head_loss(x, labels)

    def head_loss(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.out(self.norm(x)).float().flatten(0, 1), labels.flatten())


def build_baseline(seq: int, micro: int, cli, env, shape: dict):
    """(step, non_embedding parameter count) of the minimal compiled PyTorch training step."""
    torch.manual_seed(1234)
    net = PythiaBaseline(shape["layers"], shape["hidden"], shape["heads"], VOCAB, seq).to(env.device)
    non_embedding = sum(p.numel() for n, p in net.named_parameters() if not n.startswith(("embed", "out")))
    if cli.compile:
        # Regional compilation: the block's graph is compiled once per shape and serves every layer,
        # which keeps compile time to seconds per shape (a whole-model graph would unroll all layers).
        for block in net.blocks:
            block.compile(dynamic=False, mode=cli.baseline_compile_mode)
        net.head_loss = torch.compile(net.head_loss, dynamic=False)
    compiled = net
    if env.world_size > 1:
        compiled = nn.parallel.DistributedDataParallel(net, device_ids=[env.device.index] if env.device.type == "cuda" else None)
    optimizer = torch.optim.AdamW(net.parameters(), lr=6e-4, betas=(0.9, 0.95), weight_decay=0.1,
                                  fused=env.device.type == "cuda")
    dtype = torch.bfloat16 if cli.bf16 else torch.float32
    from megatron.sepllm.mask import resolve_token_ids

    separators = torch.tensor(resolve_token_ids("pythia"))
    batches = Batches(micro, seq, env.device, separators, cli.separator_rate, cli.token_file, seed=7 + env.rank)

    from megatron.neox_arguments.training import CUDA_GRAPH_COMPILE_MODES

    cuda_graphs = cli.compile and cli.baseline_compile_mode in CUDA_GRAPH_COMPILE_MODES

    def step() -> None:
        for _ in range(cli.grad_acc):
            if cuda_graphs:  # a new step: the graphs' outputs of the last one may be overwritten
                torch.compiler.cudagraph_mark_step_begin()
            tokens = batches()
            with torch.autocast(env.device.type, dtype=dtype, enabled=cli.bf16):
                loss = compiled(tokens[:, :-1], tokens[:, 1:])
            (loss / cli.grad_acc).backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step, non_embedding


def run_baseline(model: str, seq: int, micro: int, cli, env, shape: dict) -> dict:
    step, non_embedding = build_baseline(seq, micro, cli, env, shape)
    with attention_backends(env.device):
        seconds = timed(step, cli.steps, cli.warmup, env.device)
    row = dict(impl="baseline", kept=1.0, seconds=seconds, tokens=micro * seq * cli.grad_acc * env.world_size,
               non_embedding=non_embedding, layers=shape["layers"], hidden=shape["hidden"], vocab=VOCAB)
    del step
    return row


# ------------------------------------------------------------------------------ report


def finish(row: dict, model: str, seq: int, micro: int, env, ceiling: Optional[float]) -> dict:
    from megatron.training.flops import flops_per_token, peak_tflops

    fpt = flops_per_token(num_params_non_embedding=row.pop("non_embedding"), num_layers=row.pop("layers"),
                          hidden_size=row.pop("hidden"), seq_length=seq, vocab_size=row.pop("vocab"),
                          attn_map_ratio=row["kept"])
    tokens_per_s = row["tokens"] / row["seconds"]
    tflops = fpt * tokens_per_s / env.world_size / 1e12
    peak = peak_tflops(torch.cuda.get_device_name(env.device)) if env.device.type == "cuda" else None
    memory = torch.cuda.max_memory_allocated(env.device) / 2**30 if env.device.type == "cuda" else None
    return {"model": model, "seq": seq, "micro_batch": micro, **row, "tokens_per_s": tokens_per_s,
            "tokens_per_s_per_gpu": tokens_per_s / env.world_size, "tflops_per_gpu": tflops,
            "mfu": tflops / peak if peak else None, "mfu_measured": tflops / ceiling if ceiling else None,
            "max_memory_gib": memory, "gpus": env.world_size}


def add_ratios(row: dict, rows: list[dict]) -> None:
    """Framework rows over the baseline of the same shape; SepLLM over vanilla (when those ran)."""
    def same_shape(impl: str) -> Optional[dict]:
        return next((r for r in rows if r["model"] == row["model"] and r["seq"] == row["seq"]
                     and r["impl"] == impl and "tokens_per_s" in r), None)

    if "tokens_per_s" not in row:
        return
    base, vanilla = same_shape("baseline"), same_shape("framework-vanilla")
    if row["impl"].startswith("framework") and base:
        row["vs_baseline"] = row["tokens_per_s"] / base["tokens_per_s"]
    if row["impl"] == "framework-sepllm" and vanilla:
        row["vs_vanilla"] = row["tokens_per_s"] / vanilla["tokens_per_s"]


COLUMNS = ["model", "seq", "mb", "impl", "kept", "tokens/s", "TFLOP/s/GPU", "MFU meas.", "MFU peak", "vs base",
           "vs van", "mem GiB"]


def _cells(r: dict) -> list[str]:
    def pct(key):
        return f"{r[key]:.1%}" if r.get(key) is not None else "-"

    def ratio(key):
        return f"{r[key]:.3f}" if r.get(key) is not None else "-"

    head = [r["model"], str(r["seq"]), str(r["micro_batch"]), r["impl"]]
    if "error" in r:
        return head + [r["error"]] + [""] * (len(COLUMNS) - 5)
    mem = f"{r['max_memory_gib']:.1f}" if r.get("max_memory_gib") is not None else "-"
    return head + [f"{r['kept']:.3f}", f"{r['tokens_per_s']:.0f}", f"{r['tflops_per_gpu']:.1f}", pct("mfu_measured"),
                   pct("mfu"), ratio("vs_baseline"), ratio("vs_vanilla"), mem]


WIDTHS = [6, 6, 3, 18, 6, 11, 11, 9, 8, 7, 6, 7]
HEADER = " ".join(f"{c:>{w}}" if i not in (3,) else f"{c:<{w}}" for i, (c, w) in enumerate(zip(COLUMNS, WIDTHS)))


def format_row(r: dict) -> str:
    return " ".join(f"{c:>{w}}" if i not in (3,) else f"{c:<{w}}" for i, (c, w) in enumerate(zip(_cells(r), WIDTHS)))


def markdown(rows: list[dict], meta: dict) -> str:
    ceiling = f"{meta['ceiling_tflops']:.1f} TFLOP/s" if meta.get("ceiling_tflops") else "not measured (no GPU)"
    lines = [f"Device: {meta['device']} x {meta['gpus']}; measured bf16 matmul ceiling {ceiling}; "
             f"datasheet peak {meta['peak_tflops'] or '-'} TFLOP/s; {meta['steps']} timed steps after {meta['warmup']} warm-up.",
             "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_cells(r)) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_outputs(out: Optional[Path], json_path: Optional[str], rows: list[dict], meta: dict) -> None:
    """Rewrite the results after every row (atomically), so a run killed midway keeps what it measured."""
    from megatron.atomic_io import atomic_write_text

    payload = json.dumps({"meta": meta, "rows": rows}, indent=1)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "throughput.md", markdown(rows, meta))
        atomic_write_text(out / "throughput.json", payload)
    if json_path:
        atomic_write_text(json_path, payload)


def parse(argv: list[str] | None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=[*MODELS, "toy"])
    parser.add_argument("--seqs", nargs="+", type=int, default=[2048, 8192])
    parser.add_argument("--impls", nargs="+", default=["baseline", "framework-vanilla", "framework-sepllm"],
                        choices=["framework-vanilla", "framework-sepllm", "baseline"],
                        help="run in this order; ratios need the baseline / vanilla row of the shape first")
    parser.add_argument("--tokens-per-micro-batch", type=int, default=16384,
                        help="micro batch = this / seq (at least 1)")
    parser.add_argument("--grad-acc", type=int, default=1)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--sepllm-config", default="configs/sepllm/n256.yml")
    parser.add_argument("--separator-rate", type=float, default=0.1, help="share of separator tokens in random batches")
    parser.add_argument("--token-file", default=None, help=".npy of token ids to slice batches from instead")
    parser.add_argument("--model-parallel-size", type=int, default=1)
    parser.add_argument("--pipe-parallel-size", type=int, default=1)
    parser.add_argument("--sequence-parallel", action="store_true")
    parser.add_argument("--checkpoint-activations", action="store_true", help="recompute layers in backward (framework rows)")
    parser.add_argument("--no-compile", dest="compile", action="store_false", help="baseline without torch.compile")
    parser.add_argument("--compile-mode", default=None, help="framework rows: torch_compile_mode (e.g. reduce-overhead)")
    parser.add_argument("--baseline-compile-mode", default=None,
                        help="baseline rows: torch.compile mode of its blocks (default: inductor's default, the issue's baseline)")
    parser.add_argument("--fp32", dest="bf16", action="store_false", help="fp32 instead of bf16 (default on CPU)")
    parser.add_argument("--deepspeed-bf16", dest="torch_autocast", action="store_false",
                        help="framework rows with DeepSpeed's bf16 parameters (BF16_Optimizer) instead of torch_autocast")
    parser.add_argument("--json", default=None, help="also write the rows here")
    parser.add_argument("--out", type=Path, default=None, help="folder for throughput.md and throughput.json")
    parser.add_argument("--time-budget-s", type=float, default=None,
                        help="start no new row after this many seconds (the finished rows are kept)")
    parser.add_argument("--toy", action="store_true", help="tiny model, seq 128, 2 steps: a CPU smoke run")
    parser.add_argument("--isolate", action=argparse.BooleanOptionalAction, default=None,
                        help="each row in a fresh process (default: on for one GPU, off on CPU and under torchrun)")
    parser.add_argument("--ceiling-tflops", type=float, default=None, help=argparse.SUPPRESS)  # given to isolated rows
    cli = parser.parse_args(argv)
    if cli.toy:
        cli.models, cli.seqs, cli.tokens_per_micro_batch = ["toy"], [128], 256
        cli.steps, cli.warmup = min(cli.steps, 2), min(cli.warmup, 1)
    if not torch.cuda.is_available():
        cli.bf16, cli.compile = False, False  # CPU: fp32 and eager (inductor needs a compiler toolchain)
    return cli


def run_row(impl: str, model: str, seq: int, micro: int, cli, env) -> dict:
    if impl == "baseline":
        args = framework_args(model, seq, micro, "vanilla", cli)
        shape = {"layers": args.model.num_layers, "hidden": args.model.hidden_size, "heads": args.model.num_attention_heads}
        return run_baseline(model, seq, micro, cli, env, shape)
    return run_framework(model, seq, micro, impl.split("-", 1)[1], cli, env)


def release_memory(env) -> None:
    import torch._dynamo

    torch._dynamo.reset()  # compiled graphs and their guards hold on to the modules they traced
    gc.collect()
    if env.device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(env.device)


def measure(impl: str, model: str, seq: int, cli, env, ceiling: Optional[float]) -> dict:
    """One row in this process; out of memory retries at half the micro-batch, down to 1."""
    micro = max(cli.tokens_per_micro_batch // seq, 1)
    release_memory(env)
    while True:
        try:
            row = finish(run_row(impl, model, seq, micro, cli, env), model, seq, micro, env, ceiling)
            break
        except torch.OutOfMemoryError:
            release_memory(env)
            if micro == 1 or env.world_size > 1:  # ranks must agree on the shape: no retry
                row = {"model": model, "seq": seq, "micro_batch": micro, "impl": impl, "error": "out of memory"}
                break
            micro //= 2
            if env.is_main:
                print(f"{model} {seq} {impl}: out of memory, retrying at micro-batch {micro}", flush=True)
    release_memory(env)
    return row


def measure_isolated(impl: str, model: str, seq: int, cli, ceiling: Optional[float], timeout_s: Optional[float]) -> dict:
    """One row in a fresh Python process running this script, so it starts with an empty GPU."""
    micro = max(cli.tokens_per_micro_batch // seq, 1)
    failed = {"model": model, "seq": seq, "micro_batch": micro, "impl": impl}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "row.json"
        cmd = [sys.executable, __file__, "--no-isolate", "--models", model, "--seqs", str(seq), "--impls", impl,
               "--tokens-per-micro-batch", str(cli.tokens_per_micro_batch), "--grad-acc", str(cli.grad_acc),
               "--steps", str(cli.steps), "--warmup", str(cli.warmup), "--sepllm-config", cli.sepllm_config,
               "--separator-rate", str(cli.separator_rate), "--json", str(out)]
        cmd += ["--ceiling-tflops", str(ceiling)] if ceiling else []
        cmd += ["--token-file", cli.token_file] if cli.token_file else []
        cmd += ["--checkpoint-activations"] if cli.checkpoint_activations else []
        cmd += [] if cli.compile else ["--no-compile"]
        cmd += ["--compile-mode", cli.compile_mode] if cli.compile_mode else []
        cmd += ["--baseline-compile-mode", cli.baseline_compile_mode] if cli.baseline_compile_mode else []
        cmd += [] if cli.bf16 else ["--fp32"]
        cmd += [] if cli.torch_autocast else ["--deepspeed-bf16"]
        # Without this process's rendezvous variables: the row sets up its own one-process group.
        rendezvous = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
        child_env = {k: v for k, v in os.environ.items() if k not in rendezvous}
        try:
            proc = subprocess.run(cmd, cwd=REPO, env=child_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return {**failed, "error": "timed out"}
        if proc.returncode != 0 or not out.exists():
            print(proc.stdout[-3000:], flush=True)
            return {**failed, "error": f"failed (exit {proc.returncode})"}
        for line in proc.stdout.splitlines():
            if "out of memory, retrying" in line:
                print(line, flush=True)
        return json.loads(out.read_text())["rows"][0]


def main(argv: list[str] | None = None) -> list[dict]:
    from megatron.parallel.distributed import init_distributed
    from megatron.training.flops import peak_tflops

    cli = parse(argv)
    started = time.monotonic()
    env = init_distributed()
    isolate = cli.isolate if cli.isolate is not None else (env.device.type == "cuda" and env.world_size == 1)
    if isolate and env.world_size > 1:
        raise SystemExit("--isolate runs rows in fresh processes of one GPU; under torchrun use --no-isolate")
    ceiling = cli.ceiling_tflops if cli.ceiling_tflops is not None else matmul_ceiling(env.device)
    device_name = torch.cuda.get_device_name(env.device) if env.device.type == "cuda" else "cpu"
    meta = {"device": device_name, "gpus": env.world_size, "ceiling_tflops": ceiling,
            "peak_tflops": peak_tflops(device_name), "steps": cli.steps, "warmup": cli.warmup,
            "model_parallel_size": cli.model_parallel_size, "pipe_parallel_size": cli.pipe_parallel_size,
            "sequence_parallel": cli.sequence_parallel, "torch": torch.__version__, "isolated_rows": isolate,
            "framework_bf16": "torch_autocast" if cli.torch_autocast else "deepspeed",
            "compile_mode": cli.compile_mode, "baseline_compile_mode": cli.baseline_compile_mode}
    rows: list[dict] = []
    if env.is_main:
        print(f"device {device_name} x {env.world_size}; bf16 matmul ceiling "
              f"{f'{ceiling:.1f} TFLOP/s' if ceiling else '-'}; datasheet peak {meta['peak_tflops'] or '-'}", flush=True)
        print(HEADER, flush=True)
    for model in cli.models:
        for seq in cli.seqs:
            for impl in cli.impls:
                left = None if cli.time_budget_s is None else cli.time_budget_s - (time.monotonic() - started)
                if left is not None and left <= 0:
                    row = {"model": model, "seq": seq, "micro_batch": max(cli.tokens_per_micro_batch // seq, 1),
                           "impl": impl, "error": "skipped (time budget)"}
                elif isolate:
                    # A row started inside the budget may finish after it, but not by more than a minute.
                    row = measure_isolated(impl, model, seq, cli, ceiling, None if left is None else left + 60)
                else:
                    row = measure(impl, model, seq, cli, env, ceiling)
                add_ratios(row, rows)
                rows.append(row)
                if env.is_main:
                    print(format_row(row), flush=True)
                    write_outputs(cli.out, cli.json, rows, meta)
    return rows


if __name__ == "__main__":
    main()
    from megatron.parallel.distributed import end_process

    end_process(0)
