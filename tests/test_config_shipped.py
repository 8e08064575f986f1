"""Every config under configs/ loads and validates, alone (shapes) or in the combinations it documents."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from megatron.neox_arguments import ConfigError, NeoXArgs

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
SHAPES = ["pythia/160M.yml", "pythia/410M.yml", "pythia/1.4B.yml", "llama/7B.yml", "llama/tiny.yml", "demo.yml"]
OVERLAYS = sorted(p.name for p in (CONFIGS / "sepllm").glob("*.yml"))


def load(*names: str) -> NeoXArgs:
    return NeoXArgs.from_files([CONFIGS / n for n in names])


def test_every_shipped_config_is_covered_here():
    shipped = {str(p.relative_to(CONFIGS)) for p in CONFIGS.rglob("*.yml")}
    assert shipped == set(SHAPES) | {f"sepllm/{n}" for n in OVERLAYS} | {"local_setup.yml"}


@pytest.mark.parametrize("shape", SHAPES)
def test_shapes_load_alone_and_with_local_setup(shape):
    args = load(shape)
    # Shipped configs carry no key that is ignored; a bare shape sets no attention keys, which is said.
    said = [n for n in args.notices if n.startswith("no SepLLM key is set") and "configs/sepllm/vanilla.yml" in n]
    assert said == args.notices and len(said) == (shape != "demo.yml"), args.notices
    load(shape, "local_setup.yml")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_sepllm_variants_load_on_pythia_160m(overlay):
    args = load("pythia/160M.yml", f"sepllm/{overlay}", "local_setup.yml")
    assert not any(n.startswith("no SepLLM key is set") for n in args.notices)
    sep = args.sepllm
    if overlay == "vanilla.yml":
        assert sep.USE_ORIGINAL_FULL_ATTEN
    elif overlay.startswith("streamingllm"):
        assert sep.streamingLLM and sep.prefill_local_window_size == 64
    else:
        n = int(overlay.split(".")[0][1:].rstrip("HMT"))
        assert sep.prefill_local_window_size == n
        if sep.USE_PREFILL_LOCAL_WIN_SIZES_wrt_LAYERS:
            full = [i for i, w in enumerate(sep.prefill_loc_win_size_list) if w >= args.model.seq_length]
            expected = {"H": [0], "HT": [0, 11], "HMT": [0, 5, 11]}[overlay.split(".")[0].lstrip("n0123456789")]
            assert full == expected


def test_pythia_shapes_match_pythia():
    for name, layers, hidden, params_lr in (("160M", 12, 768, 6e-4), ("410M", 24, 1024, 3e-4), ("1.4B", 24, 2048, 2e-4)):
        args = load(f"pythia/{name}.yml")
        assert (args.model.num_layers, args.model.hidden_size, args.optimizer.lr) == (layers, hidden, params_lr)
        assert args.deepspeed_config(8)["train_batch_size"] == 1024


def test_demo_is_a_small_fp32_sepllm_run():
    args = load("demo.yml")
    assert args.precision.precision == "fp32" and args.optimizer.zero_stage == 0
    assert args.model.num_layers <= 4 and args.model.seq_length <= 256 and args.training.train_iters <= 200
    assert args.sepllm.separator_token_ids == "pythia" and not args.sepllm.USE_ORIGINAL_FULL_ATTEN
    assert args.deepspeed_config(1)["train_batch_size"] == 4
    tiny_llama = load("demo.yml", "llama/tiny.yml")
    assert tiny_llama.model.norm == "rmsnorm" and tiny_llama.model.num_kv_heads == 2


def test_demo_is_ready_to_train_once_its_data_is_prepared(tmp_path, monkeypatch):
    """Its relative paths name the shipped tokenizer and what tools/prepare_demo_data.py writes."""
    demo = tmp_path / "data" / "demo"
    demo.mkdir(parents=True)
    shutil.copy(REPO / "data" / "demo" / "gpt-neox-20b-tokenizer.json", demo)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="data/demo/demo_text_document.bin and data/demo/demo_text_document.idx not found"):
        load("demo.yml").validate_for("train")
    for suffix in (".bin", ".idx"):
        (demo / f"demo_text_document{suffix}").write_bytes(b"")
    load("demo.yml").validate_for("train")
    paths = {f"{k}_data_paths": ["data/demo/demo_text_document"] for k in ("train", "valid", "test")}
    labeled = NeoXArgs.from_files([str(REPO / "configs" / "demo.yml")], overrides={
        "data_path": None, **paths, "train_label_data_paths": ["data/demo/demo_text_label_document"]})
    with pytest.raises(ConfigError, match="`train_label_data_paths` entry 'data/demo/demo_text_label_document': .*bin .*not found"):
        labeled.validate_for("train")
    # a padded_vocab_size below the tokenizer's 50277 tokens is refused here, before any rank starts
    small = NeoXArgs.from_files([str(REPO / "configs" / "demo.yml")], overrides={"padded_vocab_size": 1000})
    with pytest.raises(ConfigError, match="`padded_vocab_size: 1000` is smaller than the tokenizer's 50277 tokens"):
        small.validate_for("train")
    NeoXArgs.from_files([str(REPO / "configs" / "demo.yml")], overrides={"padded_vocab_size": 50304}).validate_for("train")


@pytest.mark.parametrize("names", [["demo.yml"], ["pythia/160M.yml", "sepllm/n64HMT.yml", "local_setup.yml"], ["llama/7B.yml"]])
def test_shipped_configs_round_trip(tmp_path, names):
    args = load(*names)
    assert NeoXArgs.from_files([args.save_yaml(tmp_path / "config.yml")]).to_dict() == args.to_dict()
