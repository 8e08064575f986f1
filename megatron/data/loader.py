"""Deterministic, resumable data loading with Megatron's pretraining-sampler semantics.

Global step k reads samples [k * G, (k + 1) * G) of the dataset in order (G = micro_batch_size
x dp_size, per micro-batch); data-parallel rank r takes the r-th slice of micro_batch_size of
each. The dataset is already shuffled (see sample_index.py), so the loader never shuffles: the
sample a step sees depends only on how many samples were consumed before it. Resuming with
`consumed_samples` from a checkpoint therefore continues exactly at the next unseen sample,
even with a different data-parallel size.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch


class PretrainingBatchSampler:
    """Index lists of one micro-batch for one data-parallel rank, from `consumed_samples` on.

    Only whole global micro-batches are handed out (a trailing partial one is dropped so that
    all ranks take the same number of steps).
    """

    def __init__(self, *, total_samples: int, consumed_samples: int, micro_batch_size: int, dp_rank: int, dp_size: int):
        if micro_batch_size < 1:
            raise ValueError(f"micro_batch_size must be >= 1, got {micro_batch_size}")
        if dp_size < 1 or not 0 <= dp_rank < dp_size:
            raise ValueError(f"dp_rank must lie in [0, dp_size), got dp_rank={dp_rank}, dp_size={dp_size}")
        if consumed_samples < 0:
            raise ValueError(f"consumed_samples must be >= 0, got {consumed_samples}")
        global_micro = micro_batch_size * dp_size
        if consumed_samples + global_micro > total_samples:
            raise ValueError(
                f"the dataset holds {total_samples} samples but {consumed_samples} were already consumed, which leaves "
                f"less than one global micro-batch ({global_micro}): build the datasets for at least as many samples "
                "as the run needs (train_iters x global batch size)"
            )
        self.total_samples = total_samples
        self.consumed_samples = consumed_samples
        self.micro_batch_size = micro_batch_size
        self.dp_rank = dp_rank
        self.global_micro = global_micro

    def __len__(self) -> int:
        return (self.total_samples - self.consumed_samples) // self.global_micro

    def __iter__(self) -> Iterator[list[int]]:
        first = self.consumed_samples + self.dp_rank * self.micro_batch_size
        for step in range(len(self)):
            start = first + step * self.global_micro
            yield list(range(start, start + self.micro_batch_size))


def collate_tokens(items: list[dict]) -> dict:
    """Stack the items' "text" (and "label", from label datasets) windows into LongTensors."""
    return {k: torch.from_numpy(np.stack([it[k] for it in items]).astype(np.int64, copy=False)) for k in items[0]}


def build_data_loader(
    dataset: torch.utils.data.Dataset,
    *,
    micro_batch_size: int,
    dp_rank: int,
    dp_size: int,
    consumed_samples: int = 0,
    num_workers: int = 0,
    seed: int,
) -> torch.utils.data.DataLoader:
    """An iterable of {"text": LongTensor [micro_batch_size, seq_length + 1]} (and "label") for this rank.

    `seed` seeds the worker processes' random generators (the order itself involves no
    randomness here), so anything random a dataset may do in a worker is reproducible.
    """
    sampler = PretrainingBatchSampler(
        total_samples=len(dataset), consumed_samples=consumed_samples,
        micro_batch_size=micro_batch_size, dp_rank=dp_rank, dp_size=dp_size,
    )
    generator = torch.Generator()
    generator.manual_seed(int(seed) * 1000 + dp_rank)  # distinct worker seeds per data-parallel rank
    return torch.utils.data.DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate_tokens,
        generator=generator,
        pin_memory=False,
        persistent_workers=False,
    )
