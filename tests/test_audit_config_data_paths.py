"""A data path without its .bin/.idx pair is refused by validate_for("train"), before deepy.py starts any rank."""
from __future__ import annotations

import pytest

from megatron.neox_arguments import ConfigError, NeoXArgs

SHAPE = {"num_layers": 2, "hidden_size": 64, "num_attention_heads": 2, "seq_length": 32, "train_iters": 1,
         "train_micro_batch_size_per_gpu": 1, "tokenizer_type": "CharLevelTokenizer"}


def train_problem(**data) -> str:
    with pytest.raises(ConfigError) as info:
        NeoXArgs.from_dict({**SHAPE, **data}).validate_for("train")
    return str(info.value)


@pytest.fixture
def dataset(tmp_path):
    prefix = tmp_path / "corpus_text_document"
    for suffix in (".bin", ".idx"):
        prefix.with_name(prefix.name + suffix).write_bytes(b"")
    return prefix


def test_missing_prefix_is_named_with_the_fix(tmp_path):
    message = train_problem(data_path=str(tmp_path / "nowhere"))
    assert "`data_path` entry" in message and "nowhere.bin and" in message and "tools/preprocess_data.py" in message


def test_prefix_with_extension_suggests_the_prefix(dataset):
    message = train_problem(data_path=f"{dataset}.bin")
    assert f"give the prefix without the extension: `data_path: {dataset}`" in message


def test_input_name_suggests_the_preprocessed_prefix(dataset):
    message = train_problem(data_path=str(dataset.parent / "corpus"))
    assert f"did you mean `data_path: {dataset}`?" in message


def test_folder_suggests_the_dataset_inside(dataset):
    assert f"did you mean `data_path: {dataset}`?" in train_problem(data_path=str(dataset.parent))


def test_each_blend_entry_is_checked(dataset, tmp_path):
    message = train_problem(train_data_paths=[str(dataset), str(tmp_path / "b")], valid_data_paths=[str(dataset)],
                            test_data_paths=[str(dataset)])
    assert message.count("not found") == 1 and "`train_data_paths` entry" in message


def test_existing_pair_is_ready(dataset):
    NeoXArgs.from_dict({**SHAPE, "data_path": str(dataset)}).validate_for("train")
