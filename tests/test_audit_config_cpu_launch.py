"""deepy.py without CUDA: an fp16 config (the Pythia shapes) is refused before launch instead of failing inside deepspeed.initialize."""
from __future__ import annotations

import pytest

from megatron.neox_arguments import ConfigError, NeoXArgs
from megatron.neox_arguments.launch_command import plan_launch

SHAPE = {"num_layers": 2, "hidden_size": 64, "num_attention_heads": 2, "seq_length": 32}


def plan(cuda: bool, **keys):
    return plan_launch(NeoXArgs.from_dict({**SHAPE, **keys}), "train.py", ["a.yml"], cuda_available=cuda, environ={}, repo_root="/r")


def test_fp16_on_cpu_is_refused_with_the_override_to_use():
    with pytest.raises(ConfigError, match=r"fp16 runs on GPUs only.*`precision: fp32` and `fp16: \{enabled: false\}`"):
        plan(False, precision="fp16", fp16={"enabled": True})


def test_the_suggested_override_loads_and_fp16_stays_fine_on_gpus():
    plan(False, precision="fp32", fp16={"enabled": False})
    assert plan(True, precision="fp16", fp16={"enabled": True}).runner_args[-2:] == ["train.py", "a.yml"]


def test_global_num_gpus_must_match_the_cpu_processes_started():
    from megatron.neox_arguments.launch_command import expected_world_size

    def world(**keys):
        return expected_world_size(NeoXArgs.from_dict({**SHAPE, **keys}), cuda_available=False, device_count=0, environ={})

    # Before: the batch sizes were checked for 3 ranks while one process was started.
    with pytest.raises(ConfigError, match="global_num_gpus: 3 but this launch starts 1 CPU process"):
        world(global_num_gpus=3)
    assert world(global_num_gpus=3, num_gpus=3) == 3


def test_fp16_config_may_still_generate_on_cpu():
    args = NeoXArgs.from_dict({**SHAPE, "precision": "fp16", "fp16": {"enabled": True}})
    plan_launch(args, "generate.py", ["a.yml"], cuda_available=False, environ={}, repo_root="/r")  # generation runs in fp32 here


def test_kernel_flag_on_cpu_is_explained_once():
    notices = plan(False, USE_SEP_ATTN_KERNEL_ACCELERATOR=True).notices
    assert [n for n in notices if "USE_SEP_ATTN_KERNEL_ACCELERATOR is a GPU kernel" in n] == notices
    assert plan(False, USE_SEP_ATTN_KERNEL_ACCELERATOR=False).notices == []
    assert plan(True, USE_SEP_ATTN_KERNEL_ACCELERATOR=True).notices == []
