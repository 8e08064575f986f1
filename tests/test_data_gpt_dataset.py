"""GPT datasets: packed samples, split ranges, prefix-stable order, blending, index caches, checks."""
from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest

from megatron.data.blending import weights_by_num_documents
from megatron.data.gpt_dataset import build_train_valid_test_datasets, parse_split, split_ranges
from megatron.data.indexed_format import IndexedDatasetError, IndexedDatasetWriter
from megatron.data.sample_index import build_sample_index

EOD = 0


def make_dataset(prefix, num_docs=40, seed=0, base=1):
    """Documents of 1..30 tokens; token values encode (document, position) so samples can be traced."""
    rng = np.random.default_rng(seed)
    docs = []
    with IndexedDatasetWriter(prefix, np.uint16) as w:
        for d in range(num_docs):
            n = int(rng.integers(1, 30))
            doc = [base + (d * 37 + j) % 60000 for j in range(n)]
            w.add_document(doc, end_token=EOD)
            docs.append(doc + [EOD])
        w.finalize()
    return docs


def build(prefix, n=50, seq=16, seed=7, **kw):
    kw.setdefault("valid_samples", 0)
    kw.setdefault("test_samples", 0)
    return build_train_valid_test_datasets(data_path=str(prefix), split="100,0,0", seq_length=seq, seed=seed, train_samples=n, **kw)


def items(ds, n=None):
    return [ds[i]["text"].tolist() for i in range(len(ds) if n is None else n)]


def test_samples_are_windows_of_the_shuffled_document_stream(tmp_path):
    docs = make_dataset(tmp_path / "d")
    train, valid, test = build(tmp_path / "d", n=100, seq=16)
    assert valid is None and test is None
    idx = train.index
    stream = np.concatenate([docs[d] for d in idx.doc_idx])
    assert len(train) >= 100
    seen = set()
    for i in range(len(train)):
        x = train[i]["text"]
        assert x.dtype == np.int64 and x.shape == (17,)
        j = int(idx.shuffle_idx[i])
        assert x.tolist() == stream[j * 16: j * 16 + 17].tolist()  # consecutive samples share one token
        seen.add(j)
    assert seen == set(range(len(train)))
    # Every epoch holds every document exactly once, each epoch in its own order.
    d = len(docs)
    assert sorted(idx.doc_idx[:d].tolist()) == list(range(d))
    assert sorted(idx.doc_idx[d:2 * d].tolist()) == list(range(d))
    assert idx.doc_idx[:d].tolist() != idx.doc_idx[d:2 * d].tolist()


def test_documents_are_packed_across_boundaries_with_their_eod(tmp_path):
    make_dataset(tmp_path / "d")
    train, _, _ = build(tmp_path / "d", n=60, seq=64)
    assert sum(int((train[i]["text"] == EOD).sum()) for i in range(len(train))) > len(train)  # several documents per sample


def test_same_seed_same_samples_other_seed_other_order(tmp_path):
    make_dataset(tmp_path / "d")
    a = items(build(tmp_path / "d", seed=1)[0])
    assert a == items(build(tmp_path / "d", seed=1, cache_dir=str(tmp_path / "fresh"))[0])  # rebuilt from scratch
    assert a != items(build(tmp_path / "d", seed=2)[0])


def test_a_longer_run_starts_with_the_samples_of_a_shorter_one(tmp_path):
    make_dataset(tmp_path / "d")
    short = items(build(tmp_path / "d", n=30)[0], 30)
    long_ds = build(tmp_path / "d", n=3000, cache_dir=str(tmp_path / "other"))[0]
    assert long_ds.index.num_epochs > 10
    assert items(long_ds, 30) == short
    # Also straight from the index construction, for many lengths.
    lengths = np.random.default_rng(3).integers(1, 50, size=25)
    ref = build_sample_index(np.arange(25), lengths, seq_length=9, seed=5, num_samples=2000)
    for n in (1, 7, 80, 500):
        small = build_sample_index(np.arange(25), lengths, seq_length=9, seed=5, num_samples=n)
        k = small.num_samples
        assert k >= n
        assert np.array_equal(small.shuffle_idx, ref.shuffle_idx[:k])
        assert np.array_equal(small.sample_idx, ref.sample_idx[: k + 1])


def test_split_ranges_follow_megatron_rounding():
    assert split_ranges("969,30,1", 1000) == [(0, 969), (969, 999), (999, 1000)]
    assert split_ranges("969, 30, 1", 10) == [(0, 10), (10, 10), (10, 10)]
    assert split_ranges("8/1/1", 7) == [(0, 5), (5, 6), (6, 7)]  # 6 + 1 + 1 rounds to 8: the excess comes off the first
    assert split_ranges("1", 5) == [(0, 5), (5, 5), (5, 5)]
    assert parse_split("2,1,1") == [0.5, 0.25, 0.25]
    for bad in ("a,b", "0,0,0", "-1,2", "1,1,1,1"):
        with pytest.raises(ValueError, match="split"):
            parse_split(bad)


def test_data_path_split_gives_disjoint_document_ranges(tmp_path):
    make_dataset(tmp_path / "d", num_docs=100)
    train, valid, test = build_train_valid_test_datasets(
        data_path=str(tmp_path / "d"), split="80,15,5", seq_length=8, seed=1, train_samples=20, valid_samples=5, test_samples=3
    )
    assert (train.doc_range, valid.doc_range, test.doc_range) == ((0, 80), (80, 95), (95, 100))
    assert set(valid.index.doc_idx.tolist()) == set(range(80, 95))
    none = build_train_valid_test_datasets(data_path=str(tmp_path / "d"), split="100,0,0", seq_length=8, seed=1,
                                           train_samples=20, valid_samples=5, test_samples=0)
    assert none[1] is None and none[2] is None


def test_index_cache_is_reused_and_rebuilt_when_data_changes(tmp_path):
    make_dataset(tmp_path / "d")
    first = items(build(tmp_path / "d")[0])
    metas = list(tmp_path.glob("d_train_indexmap_*.json"))
    assert len(metas) == 1 and len(list(tmp_path.glob("d_train_indexmap_*.npy"))) == 3
    build_id = json.loads(metas[0].read_text())["build"]
    assert items(build(tmp_path / "d")[0]) == first
    assert json.loads(metas[0].read_text())["build"] == build_id  # read, not rebuilt

    docs = make_dataset(tmp_path / "d", seed=99)  # new content, same name
    rebuilt = build(tmp_path / "d")[0]
    assert json.loads(metas[0].read_text())["build"] != build_id
    assert len(list(tmp_path.glob("d_train_indexmap_*.npy"))) == 3  # the old build's arrays are gone
    stream = np.concatenate([docs[d] for d in rebuilt.index.doc_idx])
    assert rebuilt[0]["text"].tolist() == stream[int(rebuilt.index.shuffle_idx[0]) * 16:][:17].tolist()

    metas[0].write_text("{ torn")  # a damaged description is rebuilt, not trusted
    assert items(build(tmp_path / "d")[0]) == items(rebuilt)


def test_rank0_builds_while_the_other_rank_waits(tmp_path):
    make_dataset(tmp_path / "d")
    barrier = threading.Barrier(2, timeout=60)
    results, errors = {}, []

    def rank(r):
        try:
            results[r] = items(build(tmp_path / "d", rank=r, barrier=barrier.wait)[0])
        except Exception as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=rank, args=(r,)) for r in (1, 0)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and results[0] == results[1]
    assert len(list(tmp_path.glob("d_train_indexmap_*.json"))) == 1

    make_dataset(tmp_path / "e")
    with pytest.raises(RuntimeError, match="rank 0 should have built.*shared"):
        build(tmp_path / "e", rank=1, barrier=lambda: None)


def test_token_ids_beyond_the_model_vocabulary_are_refused(tmp_path):
    make_dataset(tmp_path / "d", num_docs=5, base=1000)
    with pytest.raises(IndexedDatasetError, match=r"d\.bin holds token id \d+, but the model's vocabulary has only 500.*Re-tokenize"):
        build(tmp_path / "d", vocab_size=500)
    assert len(build(tmp_path / "d", vocab_size=70000)[0]) >= 50


def test_truncated_data_is_reported_when_opening(tmp_path):
    make_dataset(tmp_path / "d")
    with open(tmp_path / "d.bin", "r+b") as f:
        f.truncate(10)
    with pytest.raises(IndexedDatasetError, match=r"d\.bin: holds 10 bytes.*truncated"):
        build(tmp_path / "d")


def test_blending_follows_weights_and_is_prefix_stable(tmp_path):
    make_dataset(tmp_path / "a", base=1)
    make_dataset(tmp_path / "b", base=30000, seed=1)

    def blend(n):
        return build_train_valid_test_datasets(
            train_data_paths=[str(tmp_path / "a"), str(tmp_path / "b")], train_data_weights=[3, 1],
            seq_length=8, seed=3, train_samples=n, valid_samples=0, test_samples=0,
        )[0]

    ds = blend(400)
    assert len(ds) == 400
    from_b = [int(ds[i]["text"][ds[i]["text"] != EOD].max() >= 30000) for i in range(400)]
    assert abs(sum(from_b) - 100) <= 1
    assert items(blend(40)) == items(ds, 40)
    by_docs = build_train_valid_test_datasets(
        train_data_paths=[str(tmp_path / "a"), str(tmp_path / "b")], weight_by_num_documents=True,
        seq_length=8, seed=3, train_samples=10, valid_samples=0, test_samples=0,
    )[0]
    assert np.allclose(by_docs.weights, [0.5, 0.5])  # equal document counts
    with pytest.raises(ValueError, match="1 weights for 2 datasets"):
        build_train_valid_test_datasets(
            train_data_paths=[str(tmp_path / "a"), str(tmp_path / "b")], train_data_weights=[1.0],
            seq_length=8, seed=3, train_samples=10, valid_samples=0, test_samples=0,
        )


def test_weight_by_num_documents_matches_gpt_neox_formula():
    counts = [100, 300, 600]
    share = np.array(counts) / 1000
    for alpha in (1.0, 0.3):
        p = share ** alpha / (share ** alpha).sum()
        w = p * (1 - share)
        assert np.allclose(weights_by_num_documents(counts, alpha), w / w.sum())
    assert weights_by_num_documents([5], 0.3) == [1.0]


def test_argument_errors_are_clear(tmp_path):
    make_dataset(tmp_path / "d")
    common = dict(seq_length=8, seed=1, train_samples=5, valid_samples=0, test_samples=0)
    with pytest.raises(ValueError, match="either data_path"):
        build_train_valid_test_datasets(data_path=str(tmp_path / "d"), train_data_paths=[str(tmp_path / "d")], **common)
    with pytest.raises(ValueError, match="no training data"):
        build_train_valid_test_datasets(**common)
    with pytest.raises(ValueError, match="seq_length"):
        build_train_valid_test_datasets(data_path=str(tmp_path / "d"), **{**common, "seq_length": 0})
    with pytest.raises(ValueError, match="train_samples"):
        build_train_valid_test_datasets(data_path=str(tmp_path / "d"), **{**common, "train_samples": -1})
    with pytest.raises(IndexedDatasetError, match="file not found"):
        build_train_valid_test_datasets(data_path=str(tmp_path / "missing"), **common)


def test_read_only_data_folder_asks_for_a_cache_dir(tmp_path, monkeypatch):
    import megatron.atomic_io as atomic_io

    make_dataset(tmp_path / "ro" / "d")
    real_commit = atomic_io.commit

    def commit(tmp, target):  # the data folder refuses writes, as a read-only mount would
        if Path(target).parent == tmp_path / "ro":
            raise PermissionError(13, "Permission denied", str(target))
        real_commit(tmp, target)

    monkeypatch.setattr(atomic_io, "commit", commit)
    with pytest.raises(PermissionError, match="set `data_cache_path` to a writable folder"):
        build(tmp_path / "ro" / "d")
    assert len(build(tmp_path / "ro" / "d", cache_dir=str(tmp_path / "cache"))[0]) >= 50
    assert not list((tmp_path / "ro").glob("*indexmap*")) and list((tmp_path / "cache").glob("*indexmap*.json"))


def test_a_validation_set_made_of_the_training_file_is_read_in_another_order(tmp_path):
    make_dataset(tmp_path / "d")
    train, valid, _ = build_train_valid_test_datasets(
        train_data_paths=[str(tmp_path / "d")], valid_data_paths=[str(tmp_path / "d")],
        seq_length=8, seed=3, train_samples=20, valid_samples=20, test_samples=0,
    )
    assert train.doc_range == valid.doc_range
    assert items(train, 20) != items(valid, 20)


def tiny_dataset(prefix, num_docs: int) -> str:
    with IndexedDatasetWriter(prefix, np.uint16) as w:
        for d in range(num_docs):
            w.add_document([1 + d, 2 + d, 3 + d], end_token=0)
        w.finalize()
    return str(prefix)


def build_split(data_path: str, split: str, train_samples: int = 4):
    return build_train_valid_test_datasets(data_path=data_path, split=split, seq_length=4, seed=1,
                                           train_samples=train_samples, valid_samples=1, test_samples=0)


def test_empty_dataset_is_refused_for_training(tmp_path):
    path = tiny_dataset(tmp_path / "empty", 0)
    with pytest.raises(ValueError, match="holds 0 documents and split '949,50,1' gives none of them to training"):
        build_split(path, "949,50,1")


def test_split_without_a_train_share_is_refused_but_eval_only_is_fine(tmp_path):
    path = tiny_dataset(tmp_path / "d", 20)
    with pytest.raises(ValueError, match="holds 20 documents and split '0,1,0'"):
        build_split(path, "0,1,0")
    train, valid, _ = build_split(path, "0,1,0", train_samples=0)
    assert train is None and valid is not None


def test_documents_ending_in_another_end_token_are_reported(tmp_path, caplog):
    from megatron.data.indexed_dataset import document_end_mismatch
    from megatron.data.indexed_format import inspect_indexed_dataset

    make_dataset(tmp_path / "d")  # every document ends with EOD = 0
    files = inspect_indexed_dataset(tmp_path / "d")
    assert document_end_mismatch(files, EOD) is None
    # Tokenized under a tokenizer type whose end of document is another token (HFAutoTokenizer's EOS
    # for a config that reads the same tokenizer with HFTokenizer): every boundary would be missed.
    message = document_end_mismatch(files, 2)
    assert message is not None and "end with token 0" in message and "end-of-document token is 2" in message
    with caplog.at_level("WARNING"):
        build(tmp_path / "d", eod=2)
    assert "re-tokenize it with the config's tokenizer_type" in caplog.text
    # Without end tokens, documents end in varied tokens: nothing to say.
    with IndexedDatasetWriter(tmp_path / "plain", np.uint16) as w:
        for d in range(40):
            w.add_document([5 + d, 100 + d])
        w.finalize()
    assert document_end_mismatch(inspect_indexed_dataset(tmp_path / "plain"), EOD) is None


def test_label_datasets_are_read_through_the_datas_sample_index(tmp_path):
    docs = make_dataset(tmp_path / "d")
    with IndexedDatasetWriter(tmp_path / "lab", np.int32) as w:  # each document's first half out of the loss
        for doc in docs:
            w.add_document([-100] * (len(doc) // 2) + doc[len(doc) // 2:])
        w.finalize()
    kw = dict(seq_length=16, seed=7, train_samples=30, valid_samples=0, test_samples=0, vocab_size=60010,
              train_data_paths=[str(tmp_path / "d")], valid_data_paths=[str(tmp_path / "d")], test_data_paths=[str(tmp_path / "d")])
    plain, _, _ = build_train_valid_test_datasets(**kw)
    train, _, _ = build_train_valid_test_datasets(**kw, train_label_data_paths=[str(tmp_path / "lab")])
    assert items(train) == items(plain)  # the labels do not change which samples are read
    # token values are unique per (document, position) apart from EOD, which always keeps its label
    label_of = {t: t if j >= len(doc) // 2 else -100 for doc in docs for j, t in enumerate(doc)}
    label_of[EOD] = EOD
    for i in range(len(train)):
        text, label = train[i]["text"], train[i]["label"]
        assert label.dtype == np.int64 and label.tolist() == [label_of[t] for t in text.tolist()]
    assert sum(int((train[i]["label"] < 0).sum()) for i in range(len(train))) > 30 * 17 // 4
    # blended: each dataset keeps its own labels
    blended, _, _ = build_train_valid_test_datasets(**{**kw, "train_data_paths": [str(tmp_path / "d")] * 2},
                                                    train_label_data_paths=[str(tmp_path / "lab"), str(tmp_path / "d")])
    assert {bool((blended[i]["label"] < 0).any()) for i in range(len(blended))} == {True, False}

    with IndexedDatasetWriter(tmp_path / "short", np.int32) as w:  # one label short in document 3
        for k, doc in enumerate(docs):
            w.add_document(doc[:-1] if k == 3 else doc)
        w.finalize()
    with pytest.raises(ValueError, match=r"short is not aligned with .*\(document 3 has \d+ tokens and \d+ labels\)"):
        build_train_valid_test_datasets(**kw, train_label_data_paths=[str(tmp_path / "short")])
    with IndexedDatasetWriter(tmp_path / "u16", np.uint16) as w:  # cannot hold -100
        for doc in docs:
            w.add_document(np.array([-100] * (len(doc) // 2) + doc[len(doc) // 2:]).astype(np.uint16))
        w.finalize()
    with pytest.raises(IndexedDatasetError, match="holds label 65436, .* stored as uint16, where the -100 .* wraps around to 65436"):
        build_train_valid_test_datasets(**kw, train_label_data_paths=[str(tmp_path / "u16")])
    with pytest.raises(ValueError, match="one label dataset per entry of train_data_paths"):
        build_train_valid_test_datasets(**kw, train_label_data_paths=[str(tmp_path / "lab")] * 2)
