"""Strict config loading: merging, key spelling, types, YAML floats, notices, round trip."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from megatron.neox_arguments import ConfigError, NeoXArgs
from megatron.atomic_io import atomic_write_text

SHAPE = "num_layers: 2\nhidden_size: 64\nnum_attention_heads: 2\nseq_length: 32\n"


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def error_of(paths, overrides=None) -> str:
    with pytest.raises(ConfigError) as info:
        NeoXArgs.from_files(paths, overrides=overrides)
    return str(info.value)


def test_unknown_key_names_file_line_key_and_closest_key(tmp_path):
    path = write(tmp_path, "a.yml", SHAPE + "num_layer: 3\n")
    message = error_of([path])
    assert f"{path}:5" in message
    assert "unknown key `num_layer`" in message
    assert "did you mean `num_layers`" in message


def test_wrong_case_suggests_the_exact_spelling(tmp_path):
    message = error_of([write(tmp_path, "a.yml", SHAPE + "use_bipe: true\n")])
    assert "did you mean `USE_BiPE`" in message and "case-sensitive" in message


def test_wrong_type_names_the_expected_type(tmp_path):
    message = error_of([write(tmp_path, "a.yml", SHAPE + "train_iters: ten\nUSE_BiPE: 1\nwarmup: '0.01'\n")])
    assert "`train_iters` must be an integer or null, got string 'ten'" in message
    assert "`USE_BiPE` must be true or false, got integer 1" in message
    assert "`warmup` must be a number, got string '0.01'" in message
    assert "3 problems" in message


def test_exponent_without_dot_is_a_float(tmp_path):
    args = NeoXArgs.from_files([write(tmp_path, "a.yml", SHAPE + "min_lr: 1e-5\nwarmup: 1.0e-2\noptimizer: {type: Adam, params: {lr: 3E-4}}\n")])
    assert args.lr.min_lr == 1e-5 and isinstance(args.lr.min_lr, float)
    assert args.lr.warmup == 0.01
    assert args.optimizer.lr == 3e-4


def test_integral_float_is_accepted_for_an_int_but_a_fraction_is_not(tmp_path):
    assert NeoXArgs.from_files([write(tmp_path, "a.yml", SHAPE + "train_iters: 1e3\n")]).training.train_iters == 1000
    assert "`train_iters` must be an integer" in error_of([write(tmp_path, "b.yml", SHAPE + "train_iters: 10.5\n")])


def test_dash_and_underscore_spell_the_same_key(tmp_path):
    dashed = NeoXArgs.from_files([write(tmp_path, "a.yml", SHAPE.replace("_", "-") + "lr-decay-style: cosine\n")])
    assert dashed.model.num_layers == 2 and dashed.lr.lr_decay_style == "cosine"
    message = error_of([write(tmp_path, "b.yml", SHAPE + "num-layers: 3\n")])
    assert "`num_layers` is also set on line 1" in message
    nested = NeoXArgs.from_files([write(tmp_path, "c.yml", SHAPE + "zero-optimization: {stage: 1, overlap-comm: true}\n")])
    assert nested.optimizer.zero_optimization == {"stage": 1, "overlap_comm": True}


def test_yaml_merge_keys_merge_and_explicit_keys_override_them(tmp_path):
    text = SHAPE + "zero_optimization:\n  <<: {stage: 2, overlap_comm: true}\n  stage: 1\n"
    args = NeoXArgs.from_files([write(tmp_path, "a.yml", text)])
    assert args.optimizer.zero_optimization["stage"] == 1 and args.optimizer.zero_optimization["overlap_comm"] is True


def test_later_files_win_and_mappings_are_replaced_whole(tmp_path):
    first = write(tmp_path, "a.yml", SHAPE + "train_iters: 10\noptimizer: {type: Adam, params: {lr: 0.1, eps: 1.0e-6}}\n")
    second = write(tmp_path, "b.yml", "train_iters: 20\noptimizer: {type: SGD, params: {lr: 0.01}}\n")
    args = NeoXArgs.from_files([first, second])
    assert args.training.train_iters == 20
    assert args.optimizer.optimizer == {"type": "SGD", "params": {"lr": 0.01}}
    assert args.sources["train_iters"] == f"{second}:1"
    assert NeoXArgs.from_files([second, first]).training.train_iters == 10
    assert args.source_files == [first, second]


def test_overrides_come_last(tmp_path):
    args = NeoXArgs.from_files([write(tmp_path, "a.yml", SHAPE + "seed: 1\n")], overrides={"seed": 7, "train-iters": 3})
    assert (args.training.seed, args.training.train_iters) == (7, 3)
    assert args.sources["seed"] == "overrides"


def test_choices_are_checked_and_canonicalised(tmp_path):
    args = NeoXArgs.from_files([write(tmp_path, "a.yml", SHAPE + "lr_decay_style: Cosine\ntokenizer_type: hftokenizer\n")])
    assert args.lr.lr_decay_style == "cosine" and args.tokenizer.tokenizer_type == "HFTokenizer"
    message = error_of([write(tmp_path, "b.yml", SHAPE + "lr_decay_style: wavy\n")])
    assert "`lr_decay_style` must be one of constant, linear, cosine, exponential, got 'wavy'" in message


def test_python_none_spelling_reads_as_null_for_optional_lists(tmp_path):
    args = NeoXArgs.from_files([write(tmp_path, "a.yml", SHAPE + "fixed_sep_intervals_list: 'None'\n")])
    assert args.sepllm.fixed_sep_intervals_list is None


def test_missing_file_bad_yaml_and_non_mapping_are_clear(tmp_path):
    assert "does not exist" in error_of([str(tmp_path / "nope.yml")])
    assert "not valid YAML" in error_of([write(tmp_path, "bad.yml", "a: [1, 2\n")])
    assert "one mapping" in error_of([write(tmp_path, "list.yml", "- 1\n- 2\n")])
    assert "no config file given" in error_of([])


def test_missing_model_shape_is_an_error(tmp_path):
    message = error_of([write(tmp_path, "a.yml", "train_iters: 3\n")])
    assert "`num_layers` (number of transformer layers) is not set" in message


def test_unsupported_keys_and_values_say_not_supported_yet(tmp_path):
    message = error_of([write(tmp_path, "a.yml", SHAPE + "moe_num_experts: 8\npos_emb: rpe\nmlp_type: llama\n")])
    assert "`moe_num_experts` is not supported yet" in message
    assert "`pos_emb: rpe` is not supported yet" in message
    assert "activation: swiglu" in message
    message = error_of([write(tmp_path, "b.yml", SHAPE + "attention_config: [[['local'], 2]]\n")])
    assert "attention types ['local'], which are not supported" in message and "[[['global'], 2]]" in message


def test_not_acted_on_keys_print_one_notice_line(tmp_path, capsys):
    path = write(tmp_path, "a.yml", SHAPE + "bias_gelu_fusion: true\nscaled_masked_softmax_fusion: true\n"
                 "synchronize_each_layer: true\ndata_impl: mmap\nrope_fusion: false\nuse_mup: false\n")
    args = NeoXArgs.from_files([path])
    lines = [line for line in capsys.readouterr().out.splitlines() if "not acted on" in line]
    assert len(lines) == 1
    for key in ("bias_gelu_fusion", "scaled_masked_softmax_fusion", "synchronize_each_layer", "data_impl", "use_mup"):
        assert key in lines[0]
    assert "rope_fusion" not in lines[0]  # set to its default: nothing is ignored
    assert args.notices[0] in lines[0]


def test_tensor_and_pipeline_parallel_sizes_set_the_data_parallel_size(tmp_path):
    layout = "model_parallel_size: 2\npipe_parallel_size: 2\nzero_optimization: {stage: 1}\n"
    args = NeoXArgs.from_files([write(tmp_path, "a.yml", SHAPE + layout)])
    assert args.parallel.data_parallel_size(8) == 2
    with pytest.raises(ConfigError, match="6"):
        args.parallel.data_parallel_size(6)


def test_notices_are_printed_by_rank_zero_only(tmp_path, capsys, monkeypatch):
    path = write(tmp_path, "a.yml", SHAPE + "bias_gelu_fusion: true\n")
    monkeypatch.setenv("RANK", "1")
    args = NeoXArgs.from_files([path])
    assert capsys.readouterr().out == "" and args.notices


def test_yaml_round_trip_gives_an_equal_config(tmp_path):
    path = write(tmp_path, "a.yml", SHAPE + "min_lr: 1e-5\nprompt_end: \"\\n\\t\"\nwandb_group: '1e-5'\n"
                 "fp16: {enabled: true, loss_scale: 0}\nseparator_token_ids: llama3\nbias_gelu_fusion: true\n"
                 "zero_optimization: {stage: 1, reduce_bucket_size: 5e8}\n")
    args = NeoXArgs.from_files([path])
    saved = args.save_yaml(tmp_path / "run" / "config.yml")
    again = NeoXArgs.from_files([saved])
    assert again.to_dict() == args.to_dict()
    assert again.logging.wandb_group == "1e-5" and again.generation.prompt_end == "\n\t"
    assert again.precision.precision == "fp16"
    assert saved.read_text().startswith(f"# Resolved config from {path}\n")


def test_atomic_write_replaces_the_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "config.yml"
    target.write_text("old")
    atomic_write_text(target, "new: 1\n")
    assert target.read_text() == "new: 1\n"
    assert os.listdir(tmp_path) == ["config.yml"]


def load_error(tmp_path, text: str) -> str:
    path = tmp_path / "c.yml"
    path.write_text(SHAPE + text)
    with pytest.raises(ConfigError) as info:
        NeoXArgs.from_files([path])
    return str(info.value)


def test_unknown_zero_key_is_refused_with_the_closest_deepspeed_key(tmp_path):
    # DeepSpeed refused it only inside deepspeed.initialize, as a pydantic traceback after the model was built.
    message = load_error(tmp_path, "zero_optimization: {stage: 1, overlap_com: true}\n")
    assert "key `overlap_com`" in message and "did you mean `overlap_comm`?" in message and "c.yml:5" in message


def test_wrongly_typed_zero_value_is_refused(tmp_path):
    message = load_error(tmp_path, "zero_optimization: {stage: 1, reduce_bucket_size: lots}\n")
    assert "key `reduce_bucket_size`" in message and "'lots'" in message


def test_upstream_zero_sections_still_load(tmp_path):
    path = tmp_path / "c.yml"
    path.write_text(SHAPE + "zero_optimization: {stage: 1, cpu_offload: false, allgather_partitions: true, overlap_comm: true}\n")
    assert NeoXArgs.from_files([path]).optimizer.zero_stage == 1


def test_non_mapping_file_names_the_file_once(tmp_path):
    path = tmp_path / "list.yml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError) as info:
        NeoXArgs.from_files([path])
    assert str(info.value).count(str(path)) == 1 and "found a seq" in str(info.value)


def test_yaml_syntax_error_points_into_the_file(tmp_path):
    path = tmp_path / "broken.yml"
    path.write_text("num_layers: [2\n")
    with pytest.raises(ConfigError) as info:
        NeoXArgs.from_files([path])
    assert f'in "{path}", line 1' in str(info.value) and "<unicode string>" not in str(info.value)


def test_top_level_lr_points_to_the_optimizer_mapping(tmp_path):
    message = load_error(tmp_path, "lr: 0.0006\n")
    assert "unknown key `lr`" in message and "optimizer.params.lr" in message


def test_unknown_fp16_key_is_refused_and_gpt_neox_fp16_keys_still_load(tmp_path):
    message = load_error(tmp_path, "precision: fp16\nfp16: {enabled: true, loss_scal: 0}\n")
    assert "`fp16` (set in" in message and "key `loss_scal`" in message and "did you mean `loss_scale`?" in message
    path = tmp_path / "ok.yml"
    path.write_text(SHAPE + "fp16: {enabled: true, type: bfloat16, consecutive_hysteresis: false}\n")
    assert NeoXArgs.from_files([path]).precision.precision == "bfloat16"


def test_folder_given_as_config_is_named_as_a_folder(tmp_path):
    with pytest.raises(ConfigError, match="is a folder; pass the YAML files in it"):
        NeoXArgs.from_files([tmp_path])


def test_a_file_that_is_not_text_is_named(tmp_path):
    path = tmp_path / "model.bin"
    path.write_bytes(b"\xff\xfe\x00binary")
    assert "is not UTF-8 text (byte 0); is it a YAML file?" in error_of([path])
