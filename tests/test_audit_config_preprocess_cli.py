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


def test_output_prefix_naming_a_folder_is_refused(tmp_path):
    (tmp_path / "a.txt").write_text("text.")
    # Before: wrote a hidden-looking out/_text_document.bin/.idx pair.
    out = subprocess.run([sys.executable, str(REPO / "tools" / "preprocess_data.py"), "--input", str(tmp_path / "a.txt"),
                          "--output-prefix", f"{tmp_path}/", "--tokenizer-type", "CharLevelTokenizer"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "names a folder" in out.stderr and f"{tmp_path}/mydata" in out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_run_that_writes_no_documents_warns(tmp_path):
    (tmp_path / "blank.jsonl").write_text('{"text": "  "}\n')
    out = subprocess.run([sys.executable, str(REPO / "tools" / "preprocess_data.py"), "--input", str(tmp_path / "blank.jsonl"),
                          "--output-prefix", str(tmp_path / "d"), "--tokenizer-type", "CharLevelTokenizer", "--no-progress"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "warning: no documents were written" in out.stderr
