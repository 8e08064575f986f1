#!/usr/bin/env python3
"""Tokenize the shipped demo corpus (data/demo/*.txt) into data/demo/demo_text_document.bin/.idx.

Idempotent: when the outputs exist and were made from the current books, tokenizer and settings
(recorded in demo_text_document.stamp.json), it does nothing. --force rebuilds anyway.
Uses the GPT-NeoX-20B tokenizer copy in data/demo/, one document per paragraph, EOD appended.
"""
from __future__ import annotations

import argparse
import glob
import hashlib
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from megatron.atomic_io import atomic_write_json, read_json_or_none  # noqa: E402
from megatron.data.indexed_format import IndexedDatasetError, files_fingerprint, inspect_indexed_dataset  # noqa: E402

DEMO_DIR = os.path.join(REPO, "data", "demo")
TOKENIZER = os.path.join(DEMO_DIR, "gpt-neox-20b-tokenizer.json")
OUTPUT_PREFIX = os.path.join(DEMO_DIR, "demo")  # preprocessing appends _text_document
DATA_PATH = OUTPUT_PREFIX + "_text_document"
SETTINGS = {"tokenizer_type": "HFTokenizer", "txt_documents": "paragraph", "append_eod": True, "keys": ["text"]}


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _recipe(books: list[str]) -> dict:
    return {
        "books": {os.path.basename(b): _sha256(b) for b in books},
        "tokenizer": _sha256(TOKENIZER),
        "settings": SETTINGS,
    }


def _up_to_date(stamp_path: str, recipe: dict) -> bool:
    stamp = read_json_or_none(stamp_path)
    if not isinstance(stamp, dict) or stamp.get("recipe") != recipe:
        return False
    try:
        inspect_indexed_dataset(DATA_PATH)
        return stamp.get("outputs") == files_fingerprint(DATA_PATH)
    except (IndexedDatasetError, OSError):
        return False


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--force", action="store_true", help="Rebuild even when the outputs are up to date.")
    args = p.parse_args(argv)
    books = sorted(glob.glob(os.path.join(DEMO_DIR, "*.txt")))
    if not books or not os.path.isfile(TOKENIZER):
        print(f"error: the demo corpus is incomplete: expected *.txt books and {TOKENIZER}", file=sys.stderr)
        return 1
    stamp_path = DATA_PATH + ".stamp.json"
    recipe = _recipe(books)
    if not args.force and _up_to_date(stamp_path, recipe):
        print(f"up to date: {os.path.relpath(DATA_PATH, REPO)}.bin/.idx")
        return 0

    from megatron.data.preprocess import preprocess
    from megatron.data.tokenizers import build_tokenizer

    tokenizer = build_tokenizer(SETTINGS["tokenizer_type"], TOKENIZER)
    summary = preprocess(
        inputs=books, output_prefix=OUTPUT_PREFIX, tokenizer=tokenizer, keys=SETTINGS["keys"],
        append_eod=SETTINGS["append_eod"], txt_mode=SETTINGS["txt_documents"], progress=False,
        overwrite=True,  # the stamp above decides when to rebuild
    )
    atomic_write_json(stamp_path, {"recipe": recipe, "outputs": files_fingerprint(DATA_PATH)})
    print(summary.report())
    print(f"data_path: {os.path.relpath(DATA_PATH, REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
