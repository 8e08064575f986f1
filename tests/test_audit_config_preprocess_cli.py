"""tools/preprocess_data.py takes an unquoted glob: the shell hands it over as many --input arguments."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from megatron.data.indexed_format import inspect_indexed_dataset

REPO = Path(__file__).resolve().parents[1]


def test_shell_expanded_glob_and_a_comma_list_together(tmp_path):
    for i in range(3):
        (tmp_path / f"book{i}.txt").write_text(f"book {i}. " * 10)
    (tmp_path / "extra.jsonl").write_text('{"text": "one more."}\n')
    books = sorted(str(p) for p in tmp_path.glob("book*.txt"))
    # Before: "error: unrecognized arguments: .../book1.txt".
    out = subprocess.run([sys.executable, str(REPO / "tools" / "preprocess_data.py"), "--input", *books[:2], f"{books[2]},{tmp_path / 'extra.jsonl'}",
                          "--output-prefix", str(tmp_path / "d"), "--tokenizer-type", "CharLevelTokenizer", "--no-progress"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "from 4 file(s)" in out.stdout
    assert inspect_indexed_dataset(tmp_path / "d_text_document").num_documents == 4
