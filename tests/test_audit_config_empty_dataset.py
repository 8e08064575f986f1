"""A data_path that gives training no documents is refused by name (the trainer failed with 'NoneType' is not an iterator)."""
from __future__ import annotations

import numpy as np
import pytest

from megatron.data.gpt_dataset import build_train_valid_test_datasets
from megatron.data.indexed_format import IndexedDatasetWriter


def dataset(prefix, num_docs: int) -> str:
    with IndexedDatasetWriter(prefix, np.uint16) as w:
        for d in range(num_docs):
            w.add_document([1 + d, 2 + d, 3 + d], end_token=0)
        w.finalize()
    return str(prefix)


def build(data_path: str, split: str, train_samples: int = 4):
    return build_train_valid_test_datasets(data_path=data_path, split=split, seq_length=4, seed=1,
                                           train_samples=train_samples, valid_samples=1, test_samples=0)


def test_empty_dataset_is_refused_for_training(tmp_path):
    path = dataset(tmp_path / "empty", 0)
    with pytest.raises(ValueError, match="holds 0 documents and split '949,50,1' gives none of them to training"):
        build(path, "949,50,1")


def test_split_without_a_train_share_is_refused_but_eval_only_is_fine(tmp_path):
    path = dataset(tmp_path / "d", 20)
    with pytest.raises(ValueError, match="holds 20 documents and split '0,1,0'"):
        build(path, "0,1,0")
    train, valid, _ = build(path, "0,1,0", train_samples=0)
    assert train is None and valid is not None
