"""Every upstream SepLLM training config and the GPT-NeoX sample configs load as they are."""
from __future__ import annotations

from pathlib import Path

import pytest

from megatron.neox_arguments import NeoXArgs

REPO = Path(__file__).resolve().parents[1]


def _shared() -> Path:
    for candidate in (REPO.parent / "shared", REPO / "shared"):
        if (candidate / "upstream").is_dir():
            return candidate
    pytest.skip("../shared/upstream (the upstream sample configs) is not on this machine")


def upstream(sub: str) -> Path:
    return _shared() / "upstream" / sub


SEPLLM_CONFIGS = ["sepllm-training-configs"]
NEOX_MODEL_CONFIGS = ["125M.yml", "19M.yml", "bf16_125M.yml", "slurm_125M.yml"]
NEOX_OVERLAYS = ["local_setup.yml", "local_setup_wandb.yml", "text_generation.yml", "cpu_mock_config.yml"]


def test_sepllm_training_configs_load():
    files = sorted(upstream("sepllm-training-configs").glob("*.yml"))
    assert len(files) >= 20
    for path in files:
        args = NeoXArgs.from_files([path])
        assert args.model.num_layers in (12, 24), path.name
        assert args.precision.precision == "fp16"
        sep = args.sepllm
        if sep.USE_PREFILL_LOCAL_WIN_SIZES_wrt_LAYERS:
            assert len(sep.prefill_loc_win_size_list) == args.model.num_layers


def test_sepllm_training_configs_take_a_data_override(tmp_path):
    override = tmp_path / "data.yml"
    override.write_text("train_data_paths: null\nvalid_data_paths: null\ntest_data_paths: null\ndata_path: data/demo/demo_text_document\n"
                        "vocab_file: data/demo/gpt-neox-20b-tokenizer.json\n")
    source = upstream("sepllm-training-configs") / "sepllm-160m-on-pythia-with-pile_deduped-n64HT-kernel.yml"
    args = NeoXArgs.from_files([source, override])
    assert args.data.data_path == "data/demo/demo_text_document" and args.data.train_data_paths is None
    assert args.sepllm.prefill_loc_win_size_list == [2048] + [64] * 10 + [2048]


def test_gpt_neox_model_configs_load():
    paths = [upstream("gpt-neox-configs") / name for name in NEOX_MODEL_CONFIGS]
    paths += sorted((upstream("gpt-neox-configs") / "pythia").glob("*.yml"))
    paths += sorted((upstream("gpt-neox-configs") / "llama").glob("[0-9]*B.yml"))
    assert len(paths) >= 18
    for path in paths:
        args = NeoXArgs.from_files([path])
        assert args.model.num_layers and args.model.hidden_size, path


def test_gpt_neox_overlays_load_on_a_model_config():
    base = upstream("gpt-neox-configs") / "125M.yml"
    for name in NEOX_OVERLAYS:
        NeoXArgs.from_files([base, upstream("gpt-neox-configs") / name])
    args = NeoXArgs.from_files([upstream("gpt-neox-configs/llama/7B.yml"), upstream("gpt-neox-configs/llama/train_config.yml")])
    assert args.checkpoint.finetune and args.lr.override_lr_scheduler


def test_gpt_neox_slurm_and_wandb_settings_are_kept():
    args = NeoXArgs.from_files([upstream("gpt-neox-configs/slurm_125M.yml")])
    assert (args.launcher.launcher, args.launcher.deepspeed_slurm, args.launcher.comment) == ("slurm", True, "neox")
    args = NeoXArgs.from_files([upstream("gpt-neox-configs/125M.yml"), upstream("gpt-neox-configs/local_setup_wandb.yml")])
    assert args.logging.use_wandb is True and args.logging.wandb_project == "neox"


def test_training_free_configs_load_on_a_32_layer_llama_shape():
    base = upstream("gpt-neox-configs/llama/7B.yml")
    files = sorted(upstream("sepllm-trainingfree-configs").glob("*.yml"))
    assert files
    for path in files:
        args = NeoXArgs.from_files([base, path])
        assert args.sepllm.Layer_num == 32 and args.sepllm.PADDING_ID == 128009
