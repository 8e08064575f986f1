"""Opening a tokenized .bin/.idx pair for training: checked first, then read by megatron-core.

`open_indexed_dataset` runs the checks of `indexed_format.inspect_indexed_dataset` (clear
errors instead of megatron-core's bare asserts or a crash deep inside a DataLoader worker),
compares the largest token id with the model's vocabulary, and returns megatron-core's
memory-mapped `IndexedDataset`, the same reader Megatron-LM uses.
"""
from __future__ import annotations

import hashlib
import logging
import os
import warnings
from dataclasses import dataclass
from typing import Optional

import numpy as np

from megatron.atomic_io import atomic_write_json, read_json_or_none
from megatron.data.indexed_format import (
    IndexedDatasetError,
    IndexedFiles,
    inspect_indexed_dataset,
    max_token_id,
)

log = logging.getLogger(__name__)
# megatron-core logs five INFO lines per opened index; our own log line says what was opened.
logging.getLogger("megatron.core.datasets.indexed_dataset").setLevel(logging.WARNING)
STATS_VERSION = 1


def token_stats_path(prefix: str) -> str:
    return f"{prefix}.stats.json"


def token_stats(files: IndexedFiles, *, cache_dir: Optional[str] = None, write_cache: bool = True) -> dict:
    """{"max_token_id", "num_tokens", "num_sequences"} of a dataset, cached beside it.

    The max needs a pass over the whole .bin, so it is computed once per version of the files
    (the cache is keyed by their sizes and modification times).
    """
    path = token_stats_path(cache_prefix(files.prefix, cache_dir))
    cached = read_json_or_none(path)
    if isinstance(cached, dict) and cached.get("version") == STATS_VERSION and cached.get("fingerprint") == files.fingerprint:
        return cached
    if files.num_tokens > (1 << 30):
        log.info("scanning %d tokens of %s for the largest token id (once; cached in %s)", files.num_tokens, files.prefix, path)
    stats = {
        "version": STATS_VERSION,
        "fingerprint": files.fingerprint,
        "max_token_id": max_token_id(files),
        "num_tokens": files.num_tokens,
        "num_sequences": files.num_sequences,
    }
    if write_cache:
        atomic_write_json(path, stats)
    return stats


def check_vocab(files: IndexedFiles, stats: dict, vocab_size: Optional[int]) -> None:
    if vocab_size is None or stats["max_token_id"] < vocab_size:
        return
    raise IndexedDatasetError(
        f"{files.prefix}.bin holds token id {stats['max_token_id']}, but the model's vocabulary has only "
        f"{vocab_size} entries: the data was tokenized with a larger vocabulary than the model's tokenizer. "
        f"Re-tokenize it with the model's tokenizer (tools/preprocess_data.py), or use a tokenizer/"
        f"padded_vocab_size of at least {stats['max_token_id'] + 1}."
    )


def document_end_mismatch(files: IndexedFiles, eod: Optional[int], sample: int = 64) -> Optional[str]:
    """A warning when the documents all end in one token that is not `eod`, else None.

    That is what data tokenized with --append-eod under another tokenizer type looks like (e.g.
    HFAutoTokenizer, whose end of document is the tokenizer's EOS, for a config reading the same
    tokenizer JSON with HFTokenizer): document masks and the loss mask would then miss every
    boundary. Data without end tokens ends in varied tokens and passes.
    """
    n = files.num_sequences
    if eod is None or n < 8:
        return None
    picks = np.unique(np.linspace(0, n - 1, min(sample, n)).astype(np.int64))
    lengths = files.sequence_lengths[picks].astype(np.int64)
    picks, lengths = picks[lengths > 0], lengths[lengths > 0]
    if len(picks) < 8:
        return None
    tokens = files.tokens()
    itemsize = np.dtype(files.dtype).itemsize
    last = tokens[files.sequence_pointers[picks] // itemsize + lengths - 1]
    ends = np.unique(last)
    if len(ends) != 1 or int(ends[0]) == eod:
        return None
    return (f"{files.prefix}: all {len(picks)} documents sampled end with token {int(ends[0])}, but the tokenizer's "
            f"end-of-document token is {eod}, so document masks and eod_mask_loss will not see its boundaries. Either "
            f"it was written without --append-eod (rerun tools/preprocess_data.py with it if they should), or with "
            f"another tokenizer type (HFAutoTokenizer ends documents with the tokenizer's EOS, HFTokenizer with "
            f"<|endoftext|> or the like): re-tokenize it with the config's tokenizer_type and vocab_file.")


@dataclass
class OpenedDataset:
    files: IndexedFiles
    stats: dict
    reader: object  # megatron.core.datasets.indexed_dataset.IndexedDataset


def open_indexed_dataset(
    prefix: str, *, vocab_size: Optional[int] = None, eod: Optional[int] = None, cache_dir: Optional[str] = None,
    write_cache: bool = True,
) -> OpenedDataset:
    """Check PREFIX.bin/.idx (its token ids against `vocab_size`, its document ends against `eod`) and open it."""
    files = inspect_indexed_dataset(prefix)
    stats = token_stats(files, cache_dir=cache_dir, write_cache=write_cache)
    check_vocab(files, stats, vocab_size)
    mismatch = document_end_mismatch(files, eod)
    if mismatch is not None:
        log.warning(mismatch)
    with warnings.catch_warnings():
        # megatron-core warns at import about optional GPU libraries that reading data never uses.
        warnings.filterwarnings("ignore", message=".*(Transformer Engine|Apex).*")
        from megatron.core.datasets.indexed_dataset import IndexedDataset  # heavy import, only when training

    return OpenedDataset(files, stats, IndexedDataset(str(prefix), multimodal=False, mmap=True))


def cache_prefix(prefix: str, cache_dir: Optional[str]) -> str:
    """Where a dataset's caches live: beside it, or under `cache_dir` with the same base name."""
    if cache_dir is None:
        return prefix
    os.makedirs(cache_dir, exist_ok=True)
    # The folder's hash keeps same-named datasets from different folders apart.
    tag = hashlib.sha1(os.path.abspath(prefix).encode()).hexdigest()[:8]
    return os.path.join(cache_dir, f"{os.path.basename(prefix)}_{tag}")


__all__ = ["OpenedDataset", "open_indexed_dataset", "token_stats", "check_vocab", "document_end_mismatch", "cache_prefix"]
