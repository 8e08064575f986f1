#!/usr/bin/env python3
"""The real trainer (`deepy.py train.py`) under each torch.compile mode of the blocks, side by side.

Trains the same Pythia-shaped (160M by default) SepLLM (or vanilla) model on the shipped demo corpus from the
same seed once per mode, with evaluation and checkpoints inside the run, then resumes each run from
its last checkpoint for a few more steps. Prints, per mode: the logged training losses, the
validation losses, the steady tokens/s (log windows after the first, which holds the compile),
and the largest loss difference against the first mode. What it checks is the trainer's path
(DeepSpeed engine, data loader, evaluation, save and resume) under `torch_compile_mode`, which
the throughput benchmark's step does not take.

    python3 benchmarks/device/train_compile_modes.py --out $OUT            # on one GPU (carry .whl)
    python3 benchmarks/device/train_compile_modes.py --toy --out /tmp/cm   # CPU smoke run, eager
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LINE = re.compile(r"^\[(train|valid)\] iter (\d+) \| (.*)$")


def _overrides(cli, mode: str | None, run_dir: Path, iters: int) -> dict:
    cfg = {
        "train_iters": iters, "lr_decay_iters": cli.iters + cli.resume_iters,
        "train_batch_size": cli.micro_batch * cli.grad_acc, "train_micro_batch_size_per_gpu": cli.micro_batch,
        "gradient_accumulation_steps": cli.grad_acc, "seq_length": cli.seq, "max_position_embeddings": cli.seq,
        "eval_interval": cli.eval_interval, "eval_iters": 4, "log_interval": cli.log_interval,
        "checkpoint_factor": cli.eval_interval, "extra_save_iters": None, "keep_last_n_checkpoints": 2,
        "save": str(run_dir / "ckpt"), "load": str(run_dir / "ckpt"), "log_dir": str(run_dir / "logs"),
        "tensorboard_dir": None, "wall_clock_breakdown": False, "PRINT_KV_RATIO": False, "seed": 1234,
        "checkpoint_activations": False, "num_workers": 1,
    }
    if cli.toy:
        cfg.update(num_layers=2, attention_config=[[["global"], 2]], hidden_size=64, num_attention_heads=4, precision="fp32", fp16=None, bf16=None,
                   torch_compile=False, zero_optimization={"stage": 0})
    else:
        cfg.update(precision="bfloat16", fp16=None, bf16={"enabled": True}, torch_autocast=True,
                   torch_compile=True, torch_compile_mode=mode)
    return cfg


def _run(cli, mode: str | None, run_dir: Path, iters: int, log: Path) -> list[tuple[str, int, dict]]:
    import yaml

    run_dir.mkdir(parents=True, exist_ok=True)
    override = run_dir / f"override_{iters}.yml"
    override.write_text(yaml.safe_dump(_overrides(cli, mode, run_dir, iters)))
    configs = [f"configs/pythia/{cli.model}.yml", f"configs/sepllm/{cli.attention}.yml", "configs/local_setup.yml", str(override)]
    cmd = [sys.executable, "deepy.py", "train.py", *configs]
    t0 = time.time()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, text=True)
    rows = []
    for text in log.read_text().splitlines():
        m = LINE.match(text.strip())
        if m:
            fields = dict(part.split(" ", 1) for part in m.group(3).split(" | "))
            rows.append((m.group(1), int(m.group(2)), {k: float(v) for k, v in fields.items()}))
    # With TORCH_LOGS=recompiles set, a recompile inside the run (a stalled log window) shows here.
    recompiles = sum("Recompiling function" in line for line in log.read_text().splitlines())
    print(f"  {mode or 'default'}: {' '.join(cmd[2:])} -> rc {proc.returncode} in {time.time() - t0:.0f} s, "
          f"{recompiles} recompiles logged", flush=True)
    if proc.returncode != 0:
        print("\n".join(log.read_text().splitlines()[-40:]))
        raise SystemExit(f"training run failed (mode {mode}); log: {log}")
    return rows


def _steady(cli, it: int) -> bool:
    """Whether the log window ending at `it` is steady state: not the first window of a process
    (it holds the compile) and holding no evaluation or checkpoint save (made at window starts)."""
    start = it - cli.log_interval
    return start not in (0, cli.iters) and (not cli.eval_interval or start % cli.eval_interval != 0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--modes", nargs="+", default=["default", "reduce-overhead"],
                   help="'default' is inductor's default; MODE#N runs a mode once more")
    p.add_argument("--model", default="160M", choices=["160M", "410M", "1.4B"], help="configs/pythia/<model>.yml")
    p.add_argument("--attention", default="n64", help="configs/sepllm/<name>.yml (n64, vanilla, ...)")
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--micro-batch", type=int, default=8)
    p.add_argument("--grad-acc", type=int, default=1, help="gradient accumulation steps")
    p.add_argument("--iters", type=int, default=60)
    p.add_argument("--resume-iters", type=int, default=20, help="steps trained by the resumed run (0: no resume)")
    p.add_argument("--eval-interval", type=int, default=30, help="also the checkpoint interval")
    p.add_argument("--log-interval", type=int, default=10)
    p.add_argument("--toy", action="store_true", help="CPU smoke run: a tiny fp32 model, eager")
    p.add_argument("--out", default=os.environ.get("OUT", "/tmp/train_compile_modes"))
    cli = p.parse_args()
    if cli.toy:
        cli.seq, cli.micro_batch, cli.iters, cli.resume_iters, cli.eval_interval, cli.log_interval = 128, 2, 6, 2, 3, 1
    out = Path(cli.out)
    subprocess.run([sys.executable, "tools/prepare_demo_data.py"], cwd=REPO, check=True)
    results = {}
    for mode in cli.modes:
        run_dir = out / f"run_{mode}"
        name = mode.split("#")[0]  # "default#2": a second run of a mode (a run-to-run check)
        key = None if name == "default" else name
        results[mode] = _run(cli, key, run_dir, cli.iters, out / f"{mode}.log")
        if cli.resume_iters:
            results[mode] += _run(cli, key, run_dir, cli.iters + cli.resume_iters, out / f"{mode}_resume.log")
    (out / "train_compile_modes.json").write_text(json.dumps(results, indent=1))

    base = cli.modes[0]
    print(f"\n| mode | train losses (every {cli.log_interval} steps; resumed after {cli.iters}) | valid losses "
          f"| tokens/s (steady) | steady windows | max abs diff vs {base} |")
    print("|---|---|---|---|---|---|")
    for mode, rows in results.items():
        train = [(it, r["loss"]) for kind, it, r in rows if kind == "train"]
        valid = [(it, r["loss"]) for kind, it, r in rows if kind == "valid"]
        steady = [r["tokens_per_s"] for kind, it, r in rows if kind == "train" and _steady(cli, it)]
        tps = sum(steady) / len(steady) if steady else float("nan")
        ref = dict((it, loss) for kind, it, r in results[base] if kind == "train" for loss in [r["loss"]])
        ref.update({("v", it): r["loss"] for kind, it, r in results[base] if kind == "valid"})
        diffs = [abs(loss - ref[it]) for it, loss in train if it in ref]
        diffs += [abs(loss - ref[("v", it)]) for it, loss in valid if ("v", it) in ref]
        print(f"| {mode} | {' '.join(f'{l:.4f}' for _, l in train)} | {' '.join(f'{l:.4f}' for _, l in valid)} "
              f"| {tps:.0f} | {' '.join(f'{t:.0f}' for t in steady)} | {max(diffs) if diffs else float('nan'):.2e} |")


if __name__ == "__main__":
    main()
