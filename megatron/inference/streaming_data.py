"""Texts for streaming evaluation: a directory of books (PG19), text files or jsonl files."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator


def iter_texts(paths: list[str | Path], jsonl_key: str = "text") -> Iterator[str]:
    """Texts from files or directories, in sorted order: *.txt is one text per file, *.jsonl one per
    line (field `jsonl_key`). A directory contributes its .txt and .jsonl files."""
    if not paths:
        raise ValueError("no data given: pass --data_path with a directory of books or text/jsonl files")
    for path in paths:
        path = Path(path)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix in (".txt", ".jsonl"))
            if not files:
                raise ValueError(f"{path} holds no .txt or .jsonl files")
        elif path.is_file():
            files = [path]
        else:
            raise FileNotFoundError(f"data path {path} does not exist")
        for f in files:
            if f.suffix == ".jsonl":
                with f.open(encoding="utf-8") as fh:
                    for n, line in enumerate(fh, 1):
                        if not line.strip():
                            continue
                        record = json.loads(line)
                        if jsonl_key not in record:
                            raise ValueError(f"{f}:{n}: no {jsonl_key!r} field (set --jsonl_key)")
                        yield record[jsonl_key]
            else:
                yield f.read_text(encoding="utf-8", errors="replace")
