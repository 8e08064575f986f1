"""Tokenizer file mistakes name the setting to fix (preprocess_data.py, get_separator_ids.py and configs share them)."""
from __future__ import annotations

from pathlib import Path

import pytest

from megatron.data.tokenizers import build_tokenizer

NEOX_JSON = str(Path(__file__).resolve().parents[1] / "data" / "demo" / "gpt-neox-20b-tokenizer.json")


def test_missing_merges_names_only_the_merge_file_setting():
    with pytest.raises(ValueError) as info:
        build_tokenizer("GPT2BPETokenizer", NEOX_JSON, None)
    assert str(info.value) == "GPT2BPETokenizer needs a merges.txt file (merge_file / --merge-file)"


def test_folder_without_tokenizer_files_points_to_hftokenizer(tmp_path):
    (tmp_path / "gpt-neox-20b-tokenizer.json").write_text("{}")
    # Before: transformers' message about converting a slow tokenizer with sentencepiece or tiktoken.
    with pytest.raises(ValueError, match="cannot load a tokenizer.*holds none of tokenizer.json.*tokenizer_type HFTokenizer"):
        build_tokenizer("HFAutoTokenizer", str(tmp_path))
