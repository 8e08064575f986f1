"""benchmarks/train_throughput.py runs end to end at a toy size on CPU and reports every column."""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_throughput_benchmark_toy_run(tmp_path):
    out = tmp_path / "rows.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "train_throughput.py"), "--toy", "--json", str(out)],
        cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    rows = {r["impl"]: r for r in json.loads(out.read_text())}
    assert set(rows) == {"framework-vanilla", "framework-sepllm", "baseline"}
    for row in rows.values():
        assert row["tokens_per_s"] > 0 and row["tflops_per_gpu"] > 0 and row["seq"] == 128
        assert row["mfu"] is None  # no known peak on CPU
    assert rows["framework-vanilla"]["kept"] == 1.0
    assert 0 < rows["framework-sepllm"]["kept"] < 1.0  # window 32 of 128 tokens: SepLLM skips work
    assert "framework-sepllm" in proc.stdout and "tokens/s" in proc.stdout
