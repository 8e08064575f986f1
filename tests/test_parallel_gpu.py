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
