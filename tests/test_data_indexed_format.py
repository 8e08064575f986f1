"""The MMIDIDX format: byte compatibility with megatron-core, atomic writes, corruption checks."""
from __future__ import annotations

import os
import struct
import warnings

import numpy as np
import pytest

from megatron.data.indexed_format import (
    IndexedDatasetError,
    IndexedDatasetWriter,
    inspect_indexed_dataset,
    max_token_id,
    token_dtype_for_vocab,
)

DOCS = [[5, 6, 7], [1], [65000, 2, 3, 4], [9, 9]]


def _core():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from megatron.core.datasets import indexed_dataset
    return indexed_dataset


def _write_ours(prefix, docs, dtype):
    with IndexedDatasetWriter(prefix, dtype) as w:
        for d in docs:
            w.add_document(d)
        w.finalize()


def _write_core(prefix, docs, dtype):
    import torch

    core = _core()
    b = core.IndexedDatasetBuilder(f"{prefix}.bin", dtype=dtype)
    for d in docs:
        b.add_item(torch.tensor(d, dtype=torch.int64))
        b.end_document()
    b.finalize(f"{prefix}.idx")


@pytest.mark.parametrize("dtype", [np.uint16, np.int32])
def test_writer_bytes_equal_megatron_core_builder(tmp_path, dtype):
    _write_ours(tmp_path / "ours", DOCS, dtype)
    _write_core(tmp_path / "core", DOCS, dtype)
    for ext in (".bin", ".idx"):
        assert (tmp_path / f"ours{ext}").read_bytes() == (tmp_path / f"core{ext}").read_bytes()


def test_megatron_core_reads_ours_and_we_read_megatron_core(tmp_path):
    core = _core()
    _write_ours(tmp_path / "ours", DOCS, np.uint16)
    ds = core.IndexedDataset(str(tmp_path / "ours"))
    assert [ds[i].tolist() for i in range(len(ds))] == DOCS
    assert ds.index.dtype == np.uint16

    _write_core(tmp_path / "core", DOCS, np.int32)
    files = inspect_indexed_dataset(tmp_path / "core")
    assert files.dtype == np.int32 and files.num_sequences == 4 and files.num_documents == 4
    assert files.num_tokens == sum(map(len, DOCS))
    assert max_token_id(files) == 65000
    tokens = files.tokens()
    got = [tokens[p // 4: p // 4 + n].tolist() for p, n in zip(files.sequence_pointers, files.sequence_lengths)]
    assert got == DOCS


def test_dtype_follows_gpt_neox_rule():
    assert token_dtype_for_vocab(50277) == np.uint16
    assert token_dtype_for_vocab(65499) == np.uint16
    assert token_dtype_for_vocab(65500) == np.int32
    assert token_dtype_for_vocab(128256) == np.int32


def test_end_token_is_part_of_the_document(tmp_path):
    with IndexedDatasetWriter(tmp_path / "d", np.uint16) as w:
        w.add_document([3, 4], end_token=0)
        w.add_document(np.array([7], dtype=np.int64), end_token=0)
        w.finalize()
    f = inspect_indexed_dataset(tmp_path / "d")
    assert f.sequence_lengths.tolist() == [3, 2]
    assert f.tokens().tolist() == [3, 4, 0, 7, 0]


def test_out_of_range_token_is_refused(tmp_path):
    with IndexedDatasetWriter(tmp_path / "d", np.uint16) as w:
        with pytest.raises(ValueError, match="outside the uint16 range"):
            w.add_document([1, 70000])
        with pytest.raises(ValueError, match="outside the uint16 range"):
            w.add_document(np.array([-1]))


def test_unfinished_writer_leaves_nothing_and_keeps_old_pair(tmp_path):
    _write_ours(tmp_path / "d", DOCS, np.uint16)
    old = {e: (tmp_path / f"d{e}").read_bytes() for e in (".bin", ".idx")}
    with pytest.raises(RuntimeError):
        with IndexedDatasetWriter(tmp_path / "d", np.uint16) as w:
            w.add_document([1, 2, 3])
            raise RuntimeError("killed mid-run")
    assert sorted(os.listdir(tmp_path)) == ["d.bin", "d.idx"]  # temporaries removed
    assert {e: (tmp_path / f"d{e}").read_bytes() for e in (".bin", ".idx")} == old

    with pytest.raises(KeyboardInterrupt):
        with IndexedDatasetWriter(tmp_path / "new", np.uint16) as w:
            w.add_document([1])
            raise KeyboardInterrupt
    assert not any(n.startswith(("new", ".new")) for n in os.listdir(tmp_path))


def _good(tmp_path, dtype=np.uint16):
    _write_ours(tmp_path / "d", DOCS, dtype)
    return tmp_path / "d"


def test_missing_file_names_the_fix(tmp_path):
    prefix = _good(tmp_path)
    os.unlink(f"{prefix}.bin")
    with pytest.raises(IndexedDatasetError, match=r"d\.bin: file not found.*prefix"):
        inspect_indexed_dataset(prefix)
    with pytest.raises(IndexedDatasetError, match="without the extension"):
        inspect_indexed_dataset(f"{prefix}.idx")


def test_truncated_idx(tmp_path):
    prefix = _good(tmp_path)
    data = open(f"{prefix}.idx", "rb").read()
    open(f"{prefix}.idx", "wb").write(data[:-5])
    with pytest.raises(IndexedDatasetError, match=r"d\.idx: truncated.*preprocess_data"):
        inspect_indexed_dataset(prefix)
    open(f"{prefix}.idx", "wb").write(data[:20])
    with pytest.raises(IndexedDatasetError, match="truncated header"):
        inspect_indexed_dataset(prefix)


def test_truncated_bin(tmp_path):
    prefix = _good(tmp_path)
    data = open(f"{prefix}.bin", "rb").read()
    open(f"{prefix}.bin", "wb").write(data[:-2])
    with pytest.raises(IndexedDatasetError, match=r"d\.bin: holds 18 bytes.*truncated"):
        inspect_indexed_dataset(prefix)


def test_dtype_mismatch_between_bin_and_idx(tmp_path):
    _write_ours(tmp_path / "a", DOCS, np.uint16)
    _write_ours(tmp_path / "b", DOCS, np.int32)
    os.replace(tmp_path / "b.bin", tmp_path / "a.bin")  # int32 tokens under a uint16 index
    with pytest.raises(IndexedDatasetError, match="dtype mismatch.*4-byte tokens"):
        inspect_indexed_dataset(tmp_path / "a")


def test_foreign_and_damaged_headers(tmp_path):
    prefix = _good(tmp_path)
    good = open(f"{prefix}.idx", "rb").read()

    def check(data, pattern):
        open(f"{prefix}.idx", "wb").write(data)
        with pytest.raises(IndexedDatasetError, match=pattern):
            inspect_indexed_dataset(prefix)

    check(b"TNTIDX\x00\x00" + good[8:], "legacy 'cached'")
    check(b"GARBAGE!!" + good[9:], "not a Megatron MMIDIDX index")
    check(good[:9] + struct.pack("<Q", 2) + good[17:], "version 2")
    check(good[:17] + bytes([9]) + good[18:], "unknown dtype code 9")
    check(good[:17] + bytes([6]) + good[18:], "not an integer type")
    check(good + bytes(4), "multimodal")  # one mode byte per sequence
    lengths = np.frombuffer(good[34:34 + 16], dtype=np.int32).copy()
    lengths[0] += 1
    check(good[:34] + lengths.tobytes() + good[50:], "offsets do not match")
