"""One real launch through deepy.py on the CPU: two gloo ranks, the config paths as argv, the exit status passed on."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.multiproc
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU path of deepy.py")
def test_deepy_starts_two_cpu_ranks_that_all_reduce(tmp_path):
    config = tmp_path / "tiny.yml"
    config.write_text(f"num_layers: 2\nhidden_size: 64\nnum_attention_heads: 2\nseq_length: 32\nnum_gpus: 2\nmaster_port: {free_port()}\n")
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "DEEPY_TEST_OUT": str(out), "DEEPY_TEST_EXIT_CODE": "3"}
    env.pop("DS_ACCELERATOR", None)
    result = subprocess.run([sys.executable, "deepy.py", "tests/fixtures/deepy_allreduce.py", str(config)],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 3, result.stdout[-3000:] + result.stderr[-3000:]
    records = sorted((json.loads(p.read_text()) for p in out.glob("rank*.json")), key=lambda r: r["rank"])
    assert [r["rank"] for r in records] == [0, 1]
    for r in records:
        assert r["world_size"] == 2 and r["local_rank"] == r["rank"]
        assert r["argv"] == [str(config)]
        assert r["sum"] == 3.0
        assert (r["backend"], r["ds_accelerator"]) == ("gloo", "cpu")
