"""tools/preprocess_data.py stopped by SIGTERM (a scheduler's time limit, scancel) deletes its partial outputs."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_sigterm_removes_the_temporary_outputs(tmp_path):
    src = tmp_path / "big.jsonl"
    src.write_text("".join(json.dumps({"text": f"document {i}. " * 400}) + "\n" for i in range(4000)))
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.Popen([sys.executable, str(REPO / "tools" / "preprocess_data.py"), "--input", str(src), "--output-prefix",
                             str(out / "d"), "--tokenizer-type", "CharLevelTokenizer", "--batch-mb", "0.2", "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 60
    while not list(out.iterdir()) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be stopped; give it more input"
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, output
    assert "interrupted: no output written" in output
    assert list(out.iterdir()) == []
