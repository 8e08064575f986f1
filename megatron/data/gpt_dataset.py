"""GPT pretraining datasets: packed samples of seq_length + 1 tokens from tokenized .bin/.idx data.

`build_train_valid_test_datasets` is the entry point the trainer calls. Either
  * `data_path` (one dataset) cut into train/valid/test document ranges by `split`, or
  * `train/valid/test_data_paths`, each list blended by its `*_data_weights` (or by document
    counts with `weight_by_num_documents`), each dataset used whole.
The sample order depends only on the data, `seed` and `seq_length` (see `sample_index.py`).
Index caches are written beside the data (or under `cache_dir`) by rank 0 while the other ranks
wait on `barrier`, and are rebuilt when the data files change.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from megatron.data.blending import BlendedDataset, blending_indices, normalized_weights, weights_by_num_documents
from megatron.data.indexed_dataset import OpenedDataset, cache_prefix, open_indexed_dataset
from megatron.data.indexed_format import IndexedDatasetError, inspect_indexed_dataset
from megatron.data.sample_index import FORMAT_VERSION, SampleIndex, build_sample_index, cache_base, read_cache, write_cache

log = logging.getLogger(__name__)
SPLIT_NAMES = ("train", "valid", "test")


class GPTDataset(torch.utils.data.Dataset):
    """Item i: {"text": int64 array of seq_length + 1 tokens}, in the order of a SampleIndex; with a label
    dataset (aligned with the data token for token) also {"label": the same window of labels}."""

    def __init__(self, name: str, data: OpenedDataset, index: SampleIndex, seq_length: int, doc_range: tuple[int, int],
                 labels: Optional[OpenedDataset] = None):
        self.name = name
        self.data = data
        self.index = index
        self.seq_length = seq_length
        self.doc_range = doc_range
        self.labels = labels

    def __len__(self) -> int:
        return self.index.num_samples

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < len(self):
            raise IndexError(f"sample {i} out of range for {len(self)} samples of {self.name}")
        j = int(self.index.shuffle_idx[i])
        item = {"text": self._window(self.data, j)}
        if self.labels is not None:
            item["label"] = self._window(self.labels, j)
        return item

    def _window(self, source: OpenedDataset, j: int) -> np.ndarray:
        (p0, o0), (p1, o1) = self.index.sample_idx[j], self.index.sample_idx[j + 1]
        docs, read = self.index.doc_idx, source.reader.get
        if p0 == p1:
            tokens = read(int(docs[p0]), offset=int(o0), length=int(o1 - o0 + 1))
        else:
            parts = [read(int(docs[p0]), offset=int(o0))]
            parts += [read(int(docs[p])) for p in range(p0 + 1, p1)]
            parts.append(read(int(docs[p1]), offset=0, length=int(o1 + 1)))
            tokens = np.concatenate(parts)
        return tokens.astype(np.int64)

    def __repr__(self) -> str:
        labels = f" with labels {self.labels.files.prefix}" if self.labels is not None else ""
        return (
            f"GPTDataset({self.name}: {len(self)} samples of {self.seq_length + 1} tokens from "
            f"{self.data.files.prefix} documents [{self.doc_range[0]}, {self.doc_range[1]}){labels}, {self.index.num_epochs} epoch(s))"
        )


def parse_split(split: str) -> list[float]:
    """'969,30,1' (or '969/30/1', fewer parts meaning 0) as three fractions summing to 1."""
    try:
        parts = [float(p) for p in str(split).replace("/", ",").split(",") if p.strip()]
    except ValueError:
        raise ValueError(f"split {split!r}: expected up to three numbers like '969,30,1'") from None
    if not parts or len(parts) > 3 or any(p < 0 for p in parts) or sum(parts) <= 0:
        raise ValueError(f"split {split!r}: expected up to three non-negative numbers, not all 0, like '969,30,1'")
    parts += [0.0] * (3 - len(parts))
    total = sum(parts)
    return [p / total for p in parts]


def split_ranges(split: str, num_documents: int) -> list[tuple[int, int]]:
    """Contiguous document ranges of train/valid/test, rounded as Megatron rounds them."""
    bounds = [0]
    for frac in parse_split(split):
        bounds.append(bounds[-1] + int(round(frac * num_documents)))
    diff = bounds[-1] - num_documents
    bounds = [bounds[0]] + [b - diff for b in bounds[1:]]
    return [(bounds[k], bounds[k + 1]) for k in range(3)]


@dataclass
class _Part:
    """One dataset to build: documents [start, end) of `prefix`, for `num_samples` samples."""

    name: str
    prefix: str
    doc_range: tuple[int, int]
    num_samples: int
    split_id: int  # 0 train, 1 valid, 2 test
    label_prefix: Optional[str] = None  # aligned with `prefix` token for token


class _Builder:
    def __init__(self, *, seq_length: int, seed: int, vocab_size: Optional[int], eod: Optional[int], cache_dir: Optional[str]):
        if seq_length is None or seq_length < 1:
            raise ValueError(f"seq_length must be a positive integer, got {seq_length}")
        self.seq_length, self.seed, self.vocab_size, self.eod, self.cache_dir = seq_length, seed, vocab_size, eod, cache_dir
        self._opened: dict[str, OpenedDataset] = {}  # train/valid/test of one data_path share one reader

    def dataset(self, part: _Part, *, may_build: bool) -> GPTDataset:
        try:
            return self._dataset(part, may_build=may_build)
        except PermissionError as e:
            raise PermissionError(
                f"cannot write the index caches of {part.prefix} ({e}): set `data_cache_path` to a writable folder that every rank sees"
            ) from e

    def _dataset(self, part: _Part, *, may_build: bool) -> GPTDataset:
        data = self._opened.get(part.prefix)
        if data is None:
            data = open_indexed_dataset(part.prefix, vocab_size=self.vocab_size, eod=self.eod, cache_dir=self.cache_dir,
                                        write_cache=may_build)
            self._opened[part.prefix] = data
        start, end = part.doc_range
        identity = {
            "version": FORMAT_VERSION,
            "data": data.files.fingerprint,
            "doc_range": [start, end],
            "seq_length": self.seq_length,
            "seed": self.seed,
            "split_id": part.split_id,
        }
        base = cache_base(cache_prefix(part.prefix, self.cache_dir), part.name, identity)
        index = read_cache(base, identity, part.num_samples)
        if index is None:
            if not may_build:
                raise RuntimeError(
                    f"the sample index {base}.json that rank 0 should have built is missing or stale. "
                    "All ranks must see the same files: put the data (or cache_dir) on a filesystem shared by every node."
                )
            lengths = data.files.sequence_lengths[start:end]
            if int(np.sum(lengths, dtype=np.int64)) == 0:
                raise ValueError(f"{part.prefix}: documents [{start}, {end}) of the {part.name} split hold no tokens")
            index = build_sample_index(
                np.arange(start, end), lengths, seq_length=self.seq_length, seed=self.seed,
                num_samples=part.num_samples, split_id=part.split_id,
            )
            write_cache(base, identity, index)
        labels = self._labels(part, data, may_build=may_build) if part.label_prefix is not None else None
        return GPTDataset(part.name, data, index, self.seq_length, (start, end), labels)

    def _labels(self, part: _Part, data: OpenedDataset, *, may_build: bool) -> OpenedDataset:
        """The label dataset of `part`, checked to have `data`'s documents: the sample index of the data reads both."""
        labels = self._opened.get(part.label_prefix)
        if labels is None:
            labels = open_indexed_dataset(part.label_prefix, cache_dir=self.cache_dir, write_cache=may_build)
            if self.vocab_size is not None and labels.stats["max_token_id"] >= self.vocab_size:
                top, dtype = labels.stats["max_token_id"], np.dtype(labels.files.dtype)
                cause = (f"it is stored as {dtype}, where the -100 of a position outside the loss wraps around to "
                         f"{int(np.array(-100).astype(dtype))}: write label datasets with a signed dtype (int32, as "
                         f"GPT-NeoX and tools/preprocess_data.py --prompt-key do)") if dtype.kind == "u" else (
                         f"it was tokenized with another tokenizer than {part.prefix}")
                raise IndexedDatasetError(f"{part.label_prefix}.bin holds label {top}, but the model's vocabulary has "
                                          f"{self.vocab_size} entries: {cause}")
            self._opened[part.label_prefix] = labels
        ours, theirs = data.files.sequence_lengths, labels.files.sequence_lengths
        if len(ours) != len(theirs) or not np.array_equal(ours, theirs):
            n = min(len(ours), len(theirs))
            first = next((k for k in range(n) if ours[k] != theirs[k]), n)
            where = (f"document {first} has {int(ours[first])} tokens and {int(theirs[first])} labels" if first < n
                     else f"{len(ours)} documents against {len(theirs)}")
            raise IndexedDatasetError(f"label dataset {part.label_prefix} is not aligned with {part.prefix} ({where}): a label "
                             "dataset needs one label per token of every document, in the same order (write both from "
                             "the same preprocessing run)")
        return labels


def _as_list(paths) -> list[str]:
    return [paths] if isinstance(paths, str) else list(paths)


def _check_count(name: str, value) -> int:
    if value is None or int(value) != value or value < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    return int(value)


def build_train_valid_test_datasets(
    *,
    data_path: Optional[str] = None,
    split: str = "969,30,1",
    train_data_paths: Optional[Sequence[str]] = None,
    valid_data_paths: Optional[Sequence[str]] = None,
    test_data_paths: Optional[Sequence[str]] = None,
    train_data_weights: Optional[Sequence[float]] = None,
    valid_data_weights: Optional[Sequence[float]] = None,
    test_data_weights: Optional[Sequence[float]] = None,
    train_label_data_paths: Optional[Sequence[str]] = None,
    valid_label_data_paths: Optional[Sequence[str]] = None,
    test_label_data_paths: Optional[Sequence[str]] = None,
    weight_by_num_documents: bool = False,
    weighted_sampler_alpha: float = 1.0,
    seq_length: int,
    seed: int,
    train_samples: int,
    valid_samples: int,
    test_samples: int,
    vocab_size: Optional[int] = None,
    eod: Optional[int] = None,
    rank: int = 0,
    barrier: Optional[Callable[[], None]] = None,
    cache_dir: Optional[str] = None,
) -> tuple[Optional[torch.utils.data.Dataset], ...]:
    """(train, valid, test) datasets; an entry is None when that split has no data or 0 samples.

    Every item is {"text": int64 array of seq_length + 1}, and {"label": ...} of the same shape where
    `*_label_data_paths` pair a label dataset with each of `*_data_paths`. `vocab_size` (the model's, padded)
    makes opening fail when the data holds a larger token id; `eod` (the tokenizer's) logs a warning when
    the documents all end in another token. Rank 0 builds the index caches;
    with `barrier` (e.g. torch.distributed.barrier) the other ranks wait for it and then only
    read them. Without a barrier every rank builds what is missing (writes are atomic, so
    concurrent builders do not corrupt each other).
    """
    wanted = [_check_count(f"{n}_samples", v) for n, v in zip(SPLIT_NAMES, (train_samples, valid_samples, test_samples))]
    builder = _Builder(seq_length=seq_length, seed=seed, vocab_size=vocab_size, eod=eod, cache_dir=cache_dir)
    path_lists = (train_data_paths, valid_data_paths, test_data_paths)
    label_lists = (train_label_data_paths, valid_label_data_paths, test_label_data_paths)
    if data_path is not None and any(p for p in path_lists):
        raise ValueError("give either data_path (with split) or train/valid/test_data_paths, not both")
    for name, paths, labels in zip(SPLIT_NAMES, path_lists, label_lists):
        if labels is not None and (data_path is not None or paths is None or len(_as_list(labels)) != len(_as_list(paths))):
            raise ValueError(f"{name}_label_data_paths needs one label dataset per entry of {name}_data_paths")

    plans: list[Optional[tuple[list[_Part], Optional[list[float]], Optional[tuple]]]] = []
    if data_path is not None:
        if not isinstance(data_path, str):
            raise ValueError(f"data_path must be one dataset prefix (a string), got {data_path!r}; use train_data_paths to blend several")
        num_documents = inspect_indexed_dataset(data_path).num_sequences
        ranges = split_ranges(split, num_documents)
        for s, (name, rng, n) in enumerate(zip(SPLIT_NAMES, ranges, wanted)):
            if name == "train" and n > 0 and rng[0] == rng[1]:
                # Without this the trainer found no train loader and failed on its first step.
                raise ValueError(f"{data_path} holds {num_documents} documents and split {split!r} gives none of them to "
                                 "training; preprocess non-empty inputs, or give the first split entry a larger share")
            if n == 0 or rng[0] == rng[1]:
                if n > 0:
                    log.warning("split %r leaves no documents of %s for %s; that dataset is None", split, data_path, name)
                plans.append(None)
            else:
                plans.append(([_Part(name, data_path, rng, n, s)], None, None))
    else:
        if not train_data_paths:
            raise ValueError("no training data: set data_path, or train_data_paths (with valid/test_data_paths)")
        weight_lists = (train_data_weights, valid_data_weights, test_data_weights)
        for s, (name, paths, weights, labels, n) in enumerate(zip(SPLIT_NAMES, path_lists, weight_lists, label_lists, wanted)):
            if not paths or n == 0:
                if n > 0:
                    log.warning("%s_samples=%d but no %s_data_paths: that dataset is None", name, n, name)
                plans.append(None)
                continue
            paths = _as_list(paths)
            labels = _as_list(labels) if labels is not None else [None] * len(paths)
            files = [inspect_indexed_dataset(p) for p in paths]
            if weight_by_num_documents:
                w = weights_by_num_documents([f.num_sequences for f in files], weighted_sampler_alpha)
            else:
                w = normalized_weights(weights, len(paths), f"{name}_data_weights")
            if len(paths) == 1:
                plans.append(([_Part(name, paths[0], (0, files[0].num_sequences), n, s, labels[0])], None, None))
                continue
            indices = blending_indices(w, n)
            counts = np.bincount(indices[0], minlength=len(paths))
            parts = [
                _Part(f"{name}{k}", p, (0, f.num_sequences), max(int(c), 1), s, label)
                for k, (p, f, c, label) in enumerate(zip(paths, files, counts, labels))
            ]
            plans.append((parts, w, indices))

    builds_here = rank == 0 or barrier is None
    built: dict[int, list[GPTDataset]] = {}
    if builds_here:
        for s, plan in enumerate(plans):
            if plan is not None:
                built[s] = [builder.dataset(part, may_build=True) for part in plan[0]]
    if barrier is not None:
        barrier()
    out: list[Optional[torch.utils.data.Dataset]] = []
    for s, plan in enumerate(plans):
        if plan is None:
            out.append(None)
            continue
        parts, weights, indices = plan
        datasets = built.get(s) or [builder.dataset(part, may_build=False) for part in parts]
        out.append(datasets[0] if weights is None else BlendedDataset(datasets, weights, indices, SPLIT_NAMES[s]))
        if rank == 0:
            log.info("%s: %r", SPLIT_NAMES[s], out[-1])
    return tuple(out)
