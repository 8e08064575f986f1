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


def test_upstream_and_pythia_configs_build_the_right_model_on_meta():
    """Each upstream SepLLM config and each Pythia config builds its model; parameter counts printed."""
    import torch  # noqa: F401  (the model builds on the meta device: no memory, no init)

    from megatron.model import GPTModel, count_parameters, padded_vocab_size

    expected = {"160m": 162_322_944, "1.4b": 1_414_647_808}  # Pythia's sizes with the 50,277-token tokenizer
    paths = sorted(upstream("sepllm-training-configs").glob("*.yml")) + sorted(upstream("gpt-neox-configs/pythia").glob("*.yml"))
    for path in paths:
        if path.name == "debug.yml":
            continue
        args = NeoXArgs.from_files([path])
        vocab = padded_vocab_size(50277, args.model.make_vocab_size_divisible_by, args.parallel.model_parallel_size)
        model = GPTModel(args.model, args.sepllm, vocab, device="meta")
        n = count_parameters(model)
        print(f"{path.name}: {n:,} parameters")
        pythia = {"70M.yml": 70_426_624, "160M.yml": 162_322_944, "410M.yml": 405_334_016, "1B.yml": 1_011_781_632,
                  "1-4B.yml": 1_414_647_808, "2-8B.yml": 2_775_208_960, "6-9B.yml": 6_857_302_016, "12B.yml": 11_846_072_320}
        if path.name in pythia:  # the released Pythia models' parameter counts
            assert n == pythia[path.name], (path.name, n)
        size = next((k for k in expected if f"-{k}-" in path.name), None)
        if size is not None:
            extra = n - expected[size]  # BiPE adds a learned intra-segment position table
            assert 0 <= extra <= args.model.seq_length * args.model.hidden_size, (path.name, n)
