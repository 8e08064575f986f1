"""NCCL parity on GPUs: TP=2, PP=2, DP=2 (and TP=2 x PP=2 with 4 GPUs) give one GPU's losses.

The runs are tests/test_parallel.py's, launched by benchmarks/device/parallel_parity.py, one
process per GPU. fp32; the tolerance is looser than on CPU (2e-5) because cuBLAS picks
different reduction orders for the split matrix shapes.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.gpu, pytest.mark.multiproc]


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs (NCCL)")
def test_parallel_layouts_match_one_gpu_over_nccl(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "device" / "parallel_parity.py"), "--out", str(tmp_path)],
        cwd=ROOT, env={**os.environ, "NCCL_NVLS_ENABLE": "0"}, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    result = json.loads((tmp_path / "parity.json").read_text())
    assert result["backend"].startswith("nccl")
    layouts = {r["layout"] for r in result["rows"]}
    assert {"tp2", "pp2", "dp2"} <= layouts
    assert all(r["max_abs_diff"] <= result["tolerance"] for r in result["rows"])


# A Pythia-style block (parallel residual, biases) compiled under bf16 autocast hands one gradient
# tensor to two biases (megatron.parallel.compile.own_gradients). Over two data-parallel GPUs the
# gradients also pass through DeepSpeed's reduction (stage 0: all-reduce of .grad; ZeRO-1/2: hooks
# that copy .grad into its buckets during backward). One SGD step with accumulation 2 must move
# every parameter as eager blocks move it: SGD makes the update the averaged gradient itself.
ZERO_RUNS = [("eager", 0, None), ("compiled", 0, None), ("compiled", 1, None), ("compiled", 2, None),
             ("compiled", 2, "reduce-overhead")]


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs (NCCL)")
def test_compiled_bf16_blocks_step_like_eager_over_two_gpus_with_zero(tmp_path):
    sys.path.insert(0, str(ROOT / "tests"))
    import test_parallel as runs

    corpus = runs.build_corpus(tmp_path)
    configs = []
    for name, stage, mode in ZERO_RUNS:
        extra = {"pos_emb": "rotary", "precision": "bfloat16", "torch_autocast": True, "torch_compile": name == "compiled",
                 "torch_compile_mode": mode, "zero_optimization": {"stage": stage}, "gradient_accumulation_steps": 2,
                 "optimizer": {"type": "SGD", "params": {"lr": 1.0}}, "weight_decay": 0.0, "gradient_clipping": 0.0,
                 "warmup": 0.0, "lr_decay_style": "constant", "hidden_dropout": 0.0, "attention_dropout": 0.0}
        configs.append(runs.write_config(tmp_path, f"{name}_{stage}_{mode}", corpus, "vanilla", "one", **extra))
    out = tmp_path / "deltas.pt"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(Path(__file__).resolve()),
           str(out), *map(str, configs)]
    proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "NCCL_NVLS_ENABLE": "0"}, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    deltas = torch.load(out)
    ref = deltas[0]
    assert ref["compiled"] is False and all(d["compiled"] for d in deltas[1:])
    worst = {}
    for (name, stage, mode), got in zip(ZERO_RUNS[1:], deltas[1:]):
        worst[stage, mode] = max((float((got["delta"][n] - w).norm() / w.norm()), n)
                                 for n, w in ref["delta"].items() if w.norm() > 0)
        print(f"ZeRO {stage}, {mode or 'default'} compile: largest relative difference {worst[stage, mode][0]:.1e} "
              f"({worst[stage, mode][1]})")
    # bf16 rounding: a few 1e-3; a gradient taken twice by the second micro-batch: about 0.5
    assert all(err < 3e-2 for err, _ in worst.values()), worst


def _zero_worker(out: str, configs: list[str]) -> None:
    """One training step per config on every rank; rank 0 saves each parameter's change."""
    sys.path.insert(0, str(ROOT))
    from megatron.parallel.distributed import end_process, init_distributed, prepare_accelerator_env

    prepare_accelerator_env()
    from megatron.neox_arguments import NeoXArgs
    from megatron.training.trainer import Trainer

    env, results = None, []
    for config in configs:
        args = NeoXArgs.from_files([config])
        env = env or init_distributed(args.parallel.distributed_backend, args.launcher)
        trainer = Trainer(args, env)
        assert trainer.dp_size == 2, trainer.dp_size
        params = dict(trainer.parallel.module.named_parameters())
        before = {n: p.detach().float().clone() for n, p in params.items()}
        trainer.train_step()
        results.append({"compiled": trainer.parallel.compiled,
                        "delta": {n: (p.detach().float() - before[n]).cpu() for n, p in params.items()}})
        del trainer
    if env.is_main:
        torch.save(results, out)
    end_process(0)


if __name__ == "__main__":
    _zero_worker(sys.argv[1], sys.argv[2:])
