"""benchmarks/train_throughput.py runs end to end at a toy size on CPU and reports every column."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_throughput_benchmark_toy_run(tmp_path):
    out = tmp_path / "rows.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "train_throughput.py"), "--toy", "--json", str(out),
         "--out", str(tmp_path / "md")],
        cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    result = json.loads(out.read_text())
    assert result["meta"]["ceiling_tflops"] is None and result["meta"]["gpus"] == 1  # no matmul ceiling on CPU
    rows = {r["impl"]: r for r in result["rows"]}
    assert set(rows) == {"framework-vanilla", "framework-sepllm", "baseline"}
    for row in rows.values():
        assert row["tokens_per_s"] > 0 and row["tflops_per_gpu"] > 0 and row["seq"] == 128
        assert row["mfu"] is None and row["mfu_measured"] is None  # no known peak on CPU
    assert rows["framework-vanilla"]["kept"] == 1.0
    assert 0 < rows["framework-sepllm"]["kept"] < 1.0  # window 32 of 128 tokens: SepLLM skips work
    assert "framework-sepllm" in proc.stdout and "tokens/s" in proc.stdout
    # Ratios against the baseline and vanilla rows of the same shape, which run first.
    assert rows["framework-vanilla"]["vs_baseline"] == pytest.approx(
        rows["framework-vanilla"]["tokens_per_s"] / rows["baseline"]["tokens_per_s"])
    assert rows["framework-sepllm"]["vs_vanilla"] == pytest.approx(
        rows["framework-sepllm"]["tokens_per_s"] / rows["framework-vanilla"]["tokens_per_s"])
    table = (tmp_path / "md" / "throughput.md").read_text()
    assert table.count("| toy | 128 |") == 3 and "MFU meas." in table


def test_scaling_table_divides_by_the_gpus_and_matches_shapes(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks" / "device"))
    from scaling_table import main as scaling_main

    def write(name, gpus, tokens_per_s):
        row = {"model": "1.4B", "seq": 2048, "impl": "framework-vanilla", "micro_batch": 8,
               "tokens_per_s": tokens_per_s, "tflops_per_gpu": 1.0, "mfu_measured": 0.5}
        (tmp_path / name).write_text(json.dumps({"meta": {"gpus": gpus, "device": "GPU", "ceiling_tflops": 700.0},
                                                 "rows": [row]}))
        return str(tmp_path / name)

    one, dp2 = write("one.json", 1, 1000.0), write("dp2.json", 2, 1900.0)
    assert scaling_main(["--reference", one, "--runs", f"data 2={dp2}", f"tensor 2={tmp_path / 'gone.json'}",
                         "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "scaling.json").read_text())
    assert len(rows) == 1 and rows[0]["ratio"] == pytest.approx(0.95)
    assert "| data 2 | 2 | 1.4B | 2048 | 8 | framework-vanilla | 1900 | 950 | 1000 | 0.950 | >= 0.90 |" in \
        (tmp_path / "scaling.md").read_text()
