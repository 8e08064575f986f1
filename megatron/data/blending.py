"""Blending several datasets by weight, as GPT-NeoX does for train/valid/test_data_paths."""
from __future__ import annotations

import warnings
from typing import Optional, Sequence

import numpy as np
import torch


def normalized_weights(weights: Optional[Sequence[float]], num_datasets: int, what: str) -> list[float]:
    """`weights` checked and scaled to sum to 1; None weighs the datasets equally."""
    if weights is None:
        return [1.0 / num_datasets] * num_datasets
    weights = [float(w) for w in weights]
    if len(weights) != num_datasets:
        raise ValueError(f"{what}: {len(weights)} weights for {num_datasets} datasets; give one weight per path")
    if any(w < 0 or not np.isfinite(w) for w in weights) or sum(weights) <= 0:
        raise ValueError(f"{what}: weights must be finite, >= 0 and not all 0, got {weights}")
    total = sum(weights)
    return [w / total for w in weights]


def weights_by_num_documents(num_documents: Sequence[int], alpha: float) -> list[float]:
    """GPT-NeoX's document-count weighting (`weight_by_num_documents`).

    Sampling probabilities proportional to (n_i / N) ** alpha, each multiplied by (1 - n_i / N)
    and renormalized: alpha < 1 flattens the distribution towards the small datasets.
    """
    if len(num_documents) == 1:
        return [1.0]
    counts = np.asarray(num_documents, dtype=np.float64)
    if counts.sum() <= 0:
        raise ValueError("weight_by_num_documents: the datasets hold no documents")
    share = counts / counts.sum()
    probs = share ** alpha
    probs /= probs.sum()
    weights = probs * (1.0 - share)
    if weights.sum() <= 0:
        raise ValueError(f"weight_by_num_documents: degenerate document counts {list(num_documents)}")
    return list(weights / weights.sum())


def blending_indices(weights: Sequence[float], size: int) -> tuple[np.ndarray, np.ndarray]:
    """(dataset of each sample, index of the sample inside that dataset) for `size` samples.

    megatron-core's greedy rule: each step takes the dataset furthest behind its weight. Step i
    depends only on the weights and i, so a longer run starts with the same blended samples.
    """
    if len(weights) > np.iinfo(np.int16).max:
        raise ValueError(f"at most {np.iinfo(np.int16).max} datasets can be blended, got {len(weights)}")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(Transformer Engine|Apex).*")
        from megatron.core.datasets import helpers_cpp

    dataset_index = np.zeros(size, dtype=np.int16)
    sample_index = np.zeros(size, dtype=np.int64)
    helpers_cpp.build_blending_indices(
        dataset_index, sample_index, np.asarray(weights, dtype=np.float64), len(weights), size, False
    )
    return dataset_index, sample_index


class BlendedDataset(torch.utils.data.Dataset):
    """Samples drawn from `datasets` in the order of `blending_indices(weights, size)`."""

    def __init__(
        self,
        datasets: Sequence[torch.utils.data.Dataset],
        weights: Sequence[float],
        indices: tuple[np.ndarray, np.ndarray],
        name: str,
    ):
        self.datasets = list(datasets)
        self.weights = list(weights)
        self.name = name
        self.dataset_index, self.sample_index = indices
        counts = np.bincount(self.dataset_index, minlength=len(self.datasets))
        for ds, need in zip(self.datasets, counts):
            if need > len(ds):
                raise ValueError(f"{name}: blending needs {need} samples from a dataset that has {len(ds)}")

    def __len__(self) -> int:
        return int(self.dataset_index.shape[0])

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < len(self):
            raise IndexError(f"sample {i} out of range for {len(self)} samples")
        return self.datasets[self.dataset_index[i]][int(self.sample_index[i])]

    def __repr__(self) -> str:
        return f"BlendedDataset({self.name}: {len(self)} samples from {len(self.datasets)} datasets, weights {[round(w, 4) for w in self.weights]})"
