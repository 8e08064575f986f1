"""The order in which a GPT dataset hands out its samples, and its cache beside the data.

Samples are windows of seq_length + 1 tokens cut from one stream: the documents of epoch 0 in
a shuffled order, then those of epoch 1 in another order, and so on. Sample j starts at stream
token j * seq_length, so consecutive samples share one token (the last label of one is the
first input of the next) and documents are packed across sample boundaries.

Unlike Megatron's index (one shuffle over all samples of all epochs, sized by the number of
samples the run asks for), every random choice here depends only on (seed, split, epoch):
  * the document order of epoch e is a permutation drawn from (seed, e);
  * samples are shuffled within groups: group e holds the samples that *start* in epoch e.
So the first K samples are the same whatever number of samples a run requests: raising
train_iters or changing the batch size never reorders samples already seen (GPT-NeoX issue
984), and a run resumed with more iterations continues the same sequence.
"""
from __future__ import annotations

import hashlib
import json
import os
import secrets
import time
from dataclasses import dataclass
from typing import Optional

import numpy as np

from megatron.atomic_io import atomic_save_npy, atomic_write_json, read_json_or_none, remove_quietly

FORMAT_VERSION = 2
_DOC_STREAM, _SAMPLE_STREAM = 0, 1
ARRAYS = ("doc_idx", "sample_idx", "shuffle_idx")


@dataclass
class SampleIndex:
    doc_idx: np.ndarray  # document ids in stream order, epoch after epoch
    sample_idx: np.ndarray  # [N + 1, 2]: (position in doc_idx, token offset) where each sample starts
    shuffle_idx: np.ndarray  # [N]: the sample handed out at each step
    num_epochs: int  # epochs whose samples are included (doc_idx may hold one more to finish the last sample)

    @property
    def num_samples(self) -> int:
        return int(self.shuffle_idx.shape[0])


def _rng(seed: int, split_id: int, epoch: int, stream: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, split_id, epoch, stream])))


def samples_starting_before_epoch(epoch: int, tokens_per_epoch: int, seq_length: int) -> int:
    """Number of samples whose first token lies in epochs [0, epoch)."""
    return -(-epoch * tokens_per_epoch // seq_length)


def epochs_for(num_samples: int, tokens_per_epoch: int, seq_length: int) -> int:
    """Fewest whole epochs whose sample groups hold at least `num_samples` samples."""
    # samples_starting_before_epoch(E) >= N  <=>  E * T > (N - 1) * S
    return max(1, (max(num_samples, 1) - 1) * seq_length // tokens_per_epoch + 1)


def build_sample_index(
    doc_ids: np.ndarray, doc_lengths: np.ndarray, *, seq_length: int, seed: int, num_samples: int, split_id: int = 0
) -> SampleIndex:
    """The sample order of the documents `doc_ids` (with lengths `doc_lengths`); see the module doc.

    `split_id` (0 train, 1 valid, 2 test) draws each split's order from its own random stream, so
    a validation set made of the training files is not read in the training order.
    """
    if split_id < 0:
        raise ValueError(f"split_id must be >= 0, got {split_id}")
    if seq_length < 1:
        raise ValueError(f"seq_length must be >= 1, got {seq_length}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    doc_ids = np.asarray(doc_ids, dtype=np.int64)
    doc_lengths = np.asarray(doc_lengths, dtype=np.int64)
    tokens_per_epoch = int(doc_lengths.sum())
    if tokens_per_epoch == 0:
        raise ValueError("these documents hold no tokens, so no sample can be cut from them")
    num_epochs = epochs_for(num_samples, tokens_per_epoch, seq_length)
    total_samples = samples_starting_before_epoch(num_epochs, tokens_per_epoch, seq_length)
    # The last sample ends at stream token total_samples * seq_length (inclusive).
    doc_epochs = -(-(total_samples * seq_length + 1) // tokens_per_epoch)

    id_dtype = np.int32 if doc_ids.size == 0 or doc_ids.max() < 2**31 else np.int64
    order = [_rng(seed, split_id, e, _DOC_STREAM).permutation(doc_ids.size) for e in range(doc_epochs)]
    doc_idx = np.concatenate([doc_ids[o] for o in order]).astype(id_dtype)
    stream_lengths = np.concatenate([doc_lengths[o] for o in order])
    doc_starts = np.zeros(stream_lengths.size + 1, dtype=np.int64)
    np.cumsum(stream_lengths, out=doc_starts[1:])

    starts = np.arange(total_samples + 1, dtype=np.int64) * seq_length
    # 'right' skips empty documents: the position found is the document that holds the token.
    pos = np.searchsorted(doc_starts, starts, side="right") - 1
    sample_idx = np.stack([pos, starts - doc_starts[pos]], axis=1).astype(np.int64)

    shuffle = []
    for e in range(num_epochs):
        lo = samples_starting_before_epoch(e, tokens_per_epoch, seq_length)
        hi = samples_starting_before_epoch(e + 1, tokens_per_epoch, seq_length)
        shuffle.append(lo + _rng(seed, split_id, e, _SAMPLE_STREAM).permutation(hi - lo))
    shuffle_idx = np.concatenate(shuffle).astype(np.int64)
    return SampleIndex(doc_idx, sample_idx, shuffle_idx, num_epochs)


# --------------------------------------------------------------------------- the on-disk cache
#
# A cache is a description (BASE.json) plus three arrays (BASE_<build id>_<name>.npy). The
# description is written last and names the build id of its arrays, so it is the commit record:
# a reader that finds it also finds complete arrays of that very build, and a crash mid-build
# leaves at worst orphaned arrays that the next build removes.


def cache_base(cache_prefix: str, name: str, identity: dict) -> str:
    """File-name base of a cache; stable across data changes (the description holds the rest)."""
    key = {k: identity[k] for k in ("doc_range", "seq_length", "seed", "split_id")}
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]
    return f"{cache_prefix}_{name}_indexmap_{identity['seq_length']}sl_{identity['seed']}s_{digest}"


def _array_path(base: str, build: str, array: str) -> str:
    return f"{base}_{build}_{array}.npy"


def read_cache(base: str, identity: dict, num_samples: int) -> Optional[SampleIndex]:
    """The cached index if it matches `identity` and holds `num_samples` samples, else None."""
    meta = read_json_or_none(base + ".json")
    if not isinstance(meta, dict) or meta.get("identity") != identity or meta.get("num_samples", -1) < num_samples:
        return None
    try:
        arrays = {a: np.load(_array_path(base, meta["build"], a), mmap_mode="r", allow_pickle=False) for a in ARRAYS}
    except (OSError, ValueError, KeyError):
        return None  # replaced by a concurrent rebuild, or damaged: build again
    if arrays["shuffle_idx"].shape[0] != meta["num_samples"] or arrays["sample_idx"].shape != (meta["num_samples"] + 1, 2):
        return None
    return SampleIndex(arrays["doc_idx"], arrays["sample_idx"], arrays["shuffle_idx"], int(meta["num_epochs"]))


def write_cache(base: str, identity: dict, index: SampleIndex) -> None:
    old = read_json_or_none(base + ".json")
    build = secrets.token_hex(4)
    for a in ARRAYS:
        atomic_save_npy(_array_path(base, build, a), getattr(index, a))
    atomic_write_json(base + ".json", {
        "identity": identity,
        "build": build,
        "num_samples": index.num_samples,
        "num_epochs": index.num_epochs,
        "format": "doc_idx: document ids in stream order; sample_idx[i]: (doc_idx position, offset) where sample i starts; shuffle_idx: sample order",
    })
    if isinstance(old, dict) and isinstance(old.get("build"), str) and old["build"] != build:
        # Readers that still map the old arrays keep them until they close (POSIX unlink semantics).
        for a in ARRAYS:
            remove_quietly(_array_path(base, old["build"], a))
    _remove_orphans(base, keep=build)


def _remove_orphans(base: str, keep: str, min_age_s: float = 600.0) -> None:
    """Delete arrays of builds that never committed (a crash mid-build); recent ones may belong
    to a build still running in another process, so they are left alone."""
    folder, stem = os.path.split(base)
    try:
        names = os.listdir(folder or ".")
    except OSError:
        return
    for n in names:
        if n.startswith(stem + "_") and n.endswith(".npy") and not n.startswith(f"{stem}_{keep}_"):
            rest = n[len(stem) + 1:-4]
            build, _, array = rest.partition("_")
            path = os.path.join(folder, n)
            try:
                old_enough = time.time() - os.path.getmtime(path) > min_age_s
            except OSError:
                continue
            if array in ARRAYS and len(build) == 8 and old_enough:
                remove_quietly(path)
