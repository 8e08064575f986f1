"""Where a framework training step spends its time, against the minimal compiled PyTorch step.

    python benchmarks/device/profile_step.py --out $OUT                   # on the GPU
    python benchmarks/device/profile_step.py --model 160M --seq 2048 --variants eager compiled
    python benchmarks/device/profile_step.py --toy --out /tmp/p            # CPU smoke run
    python benchmarks/device/profile_step.py --variants baseline compiled --python-profile 40   # host hot spots

For each variant of the framework step (benchmarks/train_throughput.py's, through the DeepSpeed
engine) and for the baseline it reports: ms per step (synchronized at the end only), the host time
spent issuing each phase (forward, backward, optimizer step) without waiting for the device, the
device synchronizations one step makes (torch.cuda.set_sync_debug_mode, by call site), and, under
torch.profiler, the device-busy time per step and the top kernels. Device time well below the step
time means the device waits for the host. Writes DIR/profile.md and DIR/profile.json.

Variants (settings given as config overrides; bf16 on the GPU):
  eager                  no torch.compile (torch_autocast: fp32 parameters, bf16 compute)
  compiled-deepspeed-bf16  regional torch.compile, DeepSpeed's bf16 parameters (ZeRO-1 -> its BF16_Optimizer
                         with fp32 gradient accumulation): the framework's bf16 before torch_autocast
  compiled               regional torch.compile, torch_autocast (ZeRO-1 runs as stage 0 on one GPU)
  compiled-sepllm        the same with the SepLLM config (kernel)
  cuda-graphs(-sepllm)   compiled with torch_compile_mode reduce-overhead: blocks replayed from CUDA graphs
  trainer(-sepllm)       train.py's own step (megatron.training.trainer.Trainer.train_step: the data loader over
                         the demo corpus, the loss bookkeeping) with the `compiled` settings; no host phase times
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import json
import sys
import time
import traceback
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import train_throughput as tt  # noqa: E402
import torch  # noqa: E402

VARIANTS = {
    "eager": ("vanilla", {"torch_compile": False}),
    "compiled-deepspeed-bf16": ("vanilla", {"torch_compile": True, "torch_autocast": False}),
    "compiled": ("vanilla", {"torch_compile": True}),
    "compiled-sepllm": ("sepllm", {"torch_compile": True}),
    "cuda-graphs": ("vanilla", {"torch_compile": True, "torch_compile_mode": "reduce-overhead"}),
    "cuda-graphs-sepllm": ("sepllm", {"torch_compile": True, "torch_compile_mode": "reduce-overhead"}),
    "trainer": ("vanilla", {"torch_compile": True}),
    "trainer-sepllm": ("sepllm", {"torch_compile": True}),
}


def build_trainer(attention: str, overrides: dict, cli, env):
    """train.py's Trainer for the framework step's settings, reading the shipped demo corpus."""
    import subprocess

    from megatron.training.trainer import Trainer

    subprocess.run([sys.executable, "tools/prepare_demo_data.py"], cwd=tt.REPO, check=True, stdout=subprocess.DEVNULL)
    data = {"data_path": str(tt.REPO / "data/demo/demo_text_document"), "tokenizer_type": "HFTokenizer",
            "vocab_file": str(tt.REPO / "data/demo/gpt-neox-20b-tokenizer.json"), "num_workers": 1,
            "train_batch_size": cli.micro, "train_iters": 1000, "lr_decay_iters": 1000, "eval_interval": 10**6,
            "save": None, "load": None, "log_interval": 10**6}
    if env.device.type != "cuda":
        overrides = {**overrides, "torch_compile": False}  # inductor on CPU is slow (--toy)
    args = tt.framework_args(cli.model, cli.seq, cli.micro, attention, cli, {**overrides, **data})
    args.validate_for("train")
    return Trainer(args, env)


def sync_sites(step, device) -> dict[str, int]:
    """Call sites (file:line of the first frame outside torch) of device synchronizations in one step."""
    if device.type != "cuda":
        return {}
    sites: collections.Counter = collections.Counter()

    def record(message, category, filename, lineno, file=None, line=None):
        frames = [f for f in traceback.extract_stack()[:-1] if "/torch/" not in f.filename and "warnings" not in f.filename]
        where = frames[-3:] if frames else []
        sites[" <- ".join(f"{Path(f.filename).name}:{f.lineno}" for f in reversed(where))] += 1

    old = warnings.showwarning
    warnings.showwarning = record
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = record
            step()
    finally:
        torch.cuda.set_sync_debug_mode(0)
        warnings.showwarning = old
    torch.cuda.synchronize(device)
    return dict(sites.most_common(12))


def phase_times(engine, parallel, step, steps: int, device) -> dict[str, float]:
    """Host ms to issue forward, backward and optimizer step (no waiting), averaged over `steps`."""
    totals = collections.Counter()
    for _ in range(steps):
        b = step.batch()
        t0 = time.perf_counter()
        parallel.begin_micro_batch()
        logits = engine(b["input_ids"], position_ids=b["position_ids"], doc_ids=b["doc_ids"])
        loss = parallel.lm_loss(logits, b["labels"], b["loss_mask"])
        t1 = time.perf_counter()
        engine.backward(loss)
        t2 = time.perf_counter()
        parallel.step(engine)
        t3 = time.perf_counter()
        totals["forward"] += t1 - t0
        totals["backward"] += t2 - t1
        totals["step"] += t3 - t2
    tt.synchronize(device)
    return {k: v / steps * 1e3 for k, v in totals.items()}


def device_profile(step, steps: int, device, top: int) -> dict:
    """Device-busy ms per step and the top kernels, from torch.profiler over `steps` steps."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    tt.synchronize(device)
    start = time.perf_counter()
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        tt.synchronize(device)
    wall = (time.perf_counter() - start) / steps * 1e3
    events = prof.key_averages()
    attr = "device_time_total" if device.type == "cuda" else "cpu_time_total"
    kernels = [e for e in events if getattr(e, attr, 0) > 0 and (device.type != "cuda" or e.device_type.name == "CUDA")]
    busy = sum(getattr(e, "self_device_time_total", 0) for e in kernels) / 1e3 / steps if device.type == "cuda" else None
    kernels.sort(key=lambda e: getattr(e, "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total", 0),
                 reverse=True)
    rows = []
    for e in kernels[:top]:
        t = getattr(e, "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total", 0)
        rows.append({"name": e.key[:90], "ms_per_step": t / 1e3 / steps, "calls_per_step": e.count / steps})
    launches = sum(e.count for e in kernels) / steps
    return {"wall_ms_profiled": wall, "device_busy_ms": busy, "kernels_per_step": launches, "top": rows}


def python_profile(step, steps: int, device, top: int) -> list[dict]:
    """Host functions by own time per step (cProfile over `steps` steps): where issue time goes."""
    import cProfile
    import pstats

    tt.synchronize(device)
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(steps):
        step()
    profiler.disable()
    tt.synchronize(device)
    stats = pstats.Stats(profiler).stats
    rows = []
    for (filename, line, func), (_, calls, own, cum, _) in stats.items():
        where = "/".join(Path(filename).parts[-2:]) if filename != "~" else "builtin"
        rows.append({"function": f"{where}:{line}({func})", "calls_per_step": calls / steps,
                     "own_ms_per_step": own / steps * 1e3, "cum_ms_per_step": cum / steps * 1e3})
    rows.sort(key=lambda r: r["own_ms_per_step"], reverse=True)
    return rows[:top]


def profile_variant(name: str, cli, env) -> dict:
    tt.release_memory(env)
    if name == "baseline":
        args = tt.framework_args(cli.model, cli.seq, cli.micro, "vanilla", cli)
        shape = {"layers": args.model.num_layers, "hidden": args.model.hidden_size, "heads": args.model.num_attention_heads}
        step, _ = tt.build_baseline(cli.seq, cli.micro, cli, env, shape)
        engine = parallel = None
    elif name.startswith("trainer"):
        trainer = build_trainer(*VARIANTS[name], cli, env)
        engine, parallel, step = trainer.engine, None, trainer.train_step
    else:
        attention, overrides = VARIANTS[name]
        engine, parallel, step, _, _ = tt.build_framework(cli.model, cli.seq, cli.micro, attention, cli, env, overrides)
    out: dict = {"variant": name}
    # the baseline pins its attention backends; the framework's model picks its own, as under train.py
    with tt.attention_backends(env.device) if engine is None else contextlib.nullcontext():
        t0 = time.perf_counter()
        for _ in range(cli.warmup):
            step()
        tt.synchronize(env.device)
        out["warmup_s"] = time.perf_counter() - t0
        out["ms_per_step"] = tt.timed(step, cli.steps, 0, env.device) * 1e3
        if parallel is not None:
            out["host_ms"] = phase_times(engine, parallel, step, 3, env.device)
        out["syncs"] = sync_sites(step, env.device)
        out["profile"] = device_profile(step, 3, env.device, cli.top)
        if cli.python_profile:
            out["python"] = python_profile(step, 5, env.device, cli.python_profile)
    out["max_memory_gib"] = torch.cuda.max_memory_allocated(env.device) / 2**30 if env.device.type == "cuda" else None
    if engine is not None:
        engine.destroy()
    del engine, parallel, step
    tt.release_memory(env)
    return out


def markdown(results: list[dict], cli) -> str:
    lines = [f"Profile: {cli.model} seq {cli.seq} micro-batch {cli.micro}; {cli.steps} timed steps after {cli.warmup} warm-up.", "",
             "| variant | ms/step | device busy ms/step | kernels/step | host ms fwd / bwd / step | syncs/step | warm-up s | mem GiB |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['variant']} | {r['error']} |  |  |  |  |  |  |")
            continue
        p, h = r["profile"], r.get("host_ms")
        host = " / ".join(f"{h[k]:.1f}" for k in ("forward", "backward", "step")) if h else "-"
        busy = f"{p['device_busy_ms']:.1f}" if p["device_busy_ms"] is not None else "-"
        mem = f"{r['max_memory_gib']:.1f}" if r["max_memory_gib"] is not None else "-"
        lines.append(f"| {r['variant']} | {r['ms_per_step']:.1f} | {busy} | {p['kernels_per_step']:.0f} | {host} | "
                     f"{sum(r['syncs'].values())} | {r['warmup_s']:.1f} | {mem} |")
    for r in results:
        if "error" in r:
            continue
        lines += ["", f"### {r['variant']}", "", "sync sites: " + (json.dumps(r["syncs"]) if r["syncs"] else "none"), "",
                  "| kernel | ms/step | calls/step |", "|---|---|---|"]
        lines += [f"| `{k['name']}` | {k['ms_per_step']:.2f} | {k['calls_per_step']:.0f} |" for k in r["profile"]["top"]]
        if r.get("python"):
            lines += ["", "| host function (cProfile; slows the step) | own ms/step | cum ms/step | calls/step |", "|---|---|---|---|"]
            lines += [f"| `{k['function']}` | {k['own_ms_per_step']:.2f} | {k['cum_ms_per_step']:.2f} | {k['calls_per_step']:.0f} |"
                      for k in r["python"]]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    from megatron.atomic_io import atomic_write_text
    from megatron.parallel.distributed import init_distributed

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="160M", choices=[*tt.MODELS, "toy"])
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--micro", type=int, default=8)
    parser.add_argument("--variants", nargs="+", default=["baseline", *VARIANTS], choices=["baseline", *VARIANTS])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--python-profile", type=int, default=0, metavar="N",
                        help="also list the N host functions with the most own time per step (cProfile)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--toy", action="store_true")
    cli = parser.parse_args(argv)
    if cli.toy:
        cli.model, cli.seq, cli.micro, cli.steps, cli.warmup = "toy", 128, 2, 2, 1
        cli.variants = [v for v in cli.variants if v in ("baseline", "eager", "trainer", "trainer-sepllm")]  # inductor on CPU is slow
    # What train_throughput's framework_args and build_baseline read from their command line.
    cuda = torch.cuda.is_available()
    cli.grad_acc, cli.checkpoint_activations, cli.bf16, cli.compile, cli.torch_autocast = 1, False, cuda, cuda, True
    cli.compile_mode = None  # the cuda-graphs variants set torch_compile_mode themselves
    cli.baseline_compile_mode = None  # the baseline: inductor's default mode
    cli.model_parallel_size, cli.pipe_parallel_size, cli.sequence_parallel = 1, 1, False
    cli.sepllm_config, cli.separator_rate, cli.token_file = "configs/sepllm/n256.yml", 0.1, None
    env = init_distributed()
    results = []
    for name in cli.variants:
        try:
            results.append(profile_variant(name, cli, env))
        except Exception as e:  # one failing variant must not cost the others
            traceback.print_exc()
            results.append({"variant": name, "error": f"{type(e).__name__}: {str(e)[:200]}"})
        text = markdown(results, cli)
        print(text.split("\n\n### ")[0].splitlines()[-1], flush=True)
        if cli.out:
            cli.out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(cli.out / "profile.md", text)
            atomic_write_text(cli.out / "profile.json", json.dumps(results, indent=1))
    print(markdown(results, cli), flush=True)
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
