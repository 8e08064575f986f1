"""Config mistakes found by the new-user audit: each is refused at load time with a message naming the fix."""
from __future__ import annotations

import pytest

from megatron.neox_arguments import ConfigError, NeoXArgs

SHAPE = "num_layers: 2\nhidden_size: 64\nnum_attention_heads: 2\nseq_length: 32\n"


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
