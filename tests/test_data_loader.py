"""Loaders: deterministic order, exact resume, data-parallel slicing, workers."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from megatron.data.gpt_dataset import build_train_valid_test_datasets
from megatron.data.indexed_format import IndexedDatasetWriter
from megatron.data.loader import PretrainingBatchSampler, build_data_loader


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    d = tmp_path_factory.mktemp("loader")
    rng = np.random.default_rng(0)
    with IndexedDatasetWriter(d / "data", np.uint16) as w:
        for k in range(60):
            w.add_document(rng.integers(1, 50000, size=int(rng.integers(1, 40))), end_token=0)
        w.finalize()

    def make(n):
        return build_train_valid_test_datasets(data_path=str(d / "data"), split="1", seq_length=12, seed=11,
                                               train_samples=n, valid_samples=0, test_samples=0)[0]
    return make


def rows(loader, steps=None):
    out = []
    for step, batch in enumerate(loader):
        if steps is not None and step == steps:
            break
        assert batch["text"].dtype == torch.long and batch["text"].shape[1] == 13
        out.append(batch["text"].tolist())
    return out


def test_resume_continues_at_the_next_unseen_sample(dataset):
    ds = dataset(64)
    full = rows(build_data_loader(ds, micro_batch_size=4, dp_rank=0, dp_size=1, seed=1), 10)
    resumed = rows(build_data_loader(ds, micro_batch_size=4, dp_rank=0, dp_size=1, consumed_samples=12, seed=1), 7)
    assert resumed == full[3:10]
    assert full[0] == [ds[i]["text"].tolist() for i in range(4)]


def test_data_parallel_ranks_split_each_global_batch(dataset):
    ds = dataset(64)
    single = rows(build_data_loader(ds, micro_batch_size=4, dp_rank=0, dp_size=1, seed=1), 6)
    r0 = rows(build_data_loader(ds, micro_batch_size=2, dp_rank=0, dp_size=2, seed=1), 6)
    r1 = rows(build_data_loader(ds, micro_batch_size=2, dp_rank=1, dp_size=2, seed=1), 6)
    assert [a + b for a, b in zip(r0, r1)] == single
    # Resuming on a different number of ranks keeps the global order.
    r0_again = rows(build_data_loader(ds, micro_batch_size=2, dp_rank=0, dp_size=2, consumed_samples=8, seed=1), 1)
    assert r0_again[0] == single[2][:2]


def test_more_training_samples_do_not_reorder_the_first_batches(dataset):
    short = rows(build_data_loader(dataset(40), micro_batch_size=4, dp_rank=0, dp_size=1, seed=1))
    long = rows(build_data_loader(dataset(4000), micro_batch_size=4, dp_rank=0, dp_size=1, seed=1), len(short))
    assert long == short


def test_worker_processes_give_the_same_batches(dataset):
    ds = dataset(64)
    inline = rows(build_data_loader(ds, micro_batch_size=4, dp_rank=0, dp_size=1, seed=1), 8)
    workers = rows(build_data_loader(ds, micro_batch_size=4, dp_rank=0, dp_size=1, num_workers=2, seed=1), 8)
    assert workers == inline


def test_sampler_checks_its_arguments():
    s = PretrainingBatchSampler(total_samples=10, consumed_samples=2, micro_batch_size=2, dp_rank=1, dp_size=2)
    assert list(s) == [[4, 5], [8, 9]] and len(s) == 2  # the trailing partial global batch is dropped
    with pytest.raises(ValueError, match="build the datasets for at least"):
        PretrainingBatchSampler(total_samples=10, consumed_samples=8, micro_batch_size=2, dp_rank=0, dp_size=2)
    with pytest.raises(ValueError, match="dp_rank"):
        PretrainingBatchSampler(total_samples=10, consumed_samples=0, micro_batch_size=2, dp_rank=2, dp_size=2)
    with pytest.raises(ValueError, match="micro_batch_size"):
        PretrainingBatchSampler(total_samples=10, consumed_samples=0, micro_batch_size=0, dp_rank=0, dp_size=1)
