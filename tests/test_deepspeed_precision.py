"""torch_autocast (bf16 compute over fp32 parameters) in the DeepSpeed config, its refused
combinations, and the clipping `Parallel.step` takes over from DeepSpeed without ZeRO. CPU."""
from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_convert_fixtures import restore_environ  # noqa: F401,E402 (autouse: undoes init_distributed's environment)

from megatron.neox_arguments import ConfigError, NeoXArgs  # noqa: E402
from megatron.parallel.layout import Layout  # noqa: E402
from megatron.parallel.parallelize import Parallel  # noqa: E402

SHAPE = {"num_layers": 2, "hidden_size": 64, "num_attention_heads": 2, "seq_length": 32,
         "train_micro_batch_size_per_gpu": 2, "gradient_clipping": 1.0}


def ds_config(dp: int = 1, **settings) -> dict:
    return NeoXArgs.from_dict({**SHAPE, **settings}, source="t.yml").deepspeed_config(dp)


def test_torch_autocast_section_replaces_bf16_parameters():
    config = ds_config(precision="bfloat16", torch_autocast=True, zero_optimization={"stage": 1})
    assert config["torch_autocast"] == {"enabled": True, "dtype": "bfloat16"}
    assert "bf16" not in config and "fp16" not in config
    fp32_reduce = ds_config(precision="bfloat16", torch_autocast=True, fp32_allreduce=True)
    assert fp32_reduce["torch_autocast"]["lower_precision_safe_modules"] == []
    assert ds_config(precision="bfloat16")["bf16"] == {"enabled": True} and "torch_autocast" not in ds_config(precision="bfloat16")
    from deepspeed.runtime.config import DeepSpeedConfig

    parsed = DeepSpeedConfig(config)
    assert parsed.torch_autocast_enabled and parsed.torch_autocast_dtype == torch.bfloat16 and not parsed.bfloat16_config.enabled


@pytest.mark.parametrize("settings,message", [
    ({"precision": "fp16", "fp16": {"enabled": True}}, "set precision: bfloat16"),
    ({"precision": "fp32"}, "but precision is fp32"),
    ({"precision": "bfloat16", "zero_optimization": {"stage": 3}}, "supports ZeRO stages 0, 1, 2, got stage 3"),
    ({"precision": "bfloat16", "model_parallel_size": 2}, "without tensor or pipeline parallelism"),
    ({"precision": "bfloat16", "pipe_parallel_size": 2, "zero_optimization": {"stage": 1}}, "without tensor or pipeline parallelism"),
], ids=["fp16", "fp32", "zero3", "tensor-parallel", "pipeline"])
def test_torch_autocast_refuses_what_it_does_not_run(settings, message):
    with pytest.raises(ConfigError, match=message):
        ds_config(torch_autocast=True, **settings)


def test_parallel_runs_zero_over_one_rank_as_stage0_and_clips_itself():
    autocast = {"torch_autocast": {"enabled": True}, "zero_optimization": {"stage": 1}, "gradient_clipping": 1.0}
    one = Parallel(Layout(1, 1, 1), torch.nn.Linear(2, 2), None)
    config = one.deepspeed_config(autocast)
    assert config["zero_optimization"]["stage"] == 0 and config["gradient_clipping"] == 0.0 and one.clip_grad == 1.0
    two = Parallel(Layout(1, 1, 2), torch.nn.Linear(2, 2), None)
    config = two.deepspeed_config(autocast)
    assert config["zero_optimization"]["stage"] == 1 and config["gradient_clipping"] == 1.0 and two.clip_grad is None
    # DeepSpeed's bf16 and fp16 optimizer wrappers clip inside their own step.
    bf16 = {"bf16": {"enabled": True}, "zero_optimization": {"stage": 0}, "gradient_clipping": 1.0}
    assert one.deepspeed_config(bf16)["gradient_clipping"] == 1.0 and one.clip_grad is None


def _engine(module: torch.nn.Module, extra: dict):
    import deepspeed  # noqa: F401

    from megatron.parallel.distributed import init_distributed

    init_distributed()
    parallel = Parallel(Layout(1, 1, 1), module, None)
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-2)
    config = {"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 2, "gradient_clipping": 0.05,
              "zero_optimization": {"stage": 0}, **extra}
    return parallel, parallel.initialize(optimizer, None, config)


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "torch-autocast"])
def test_step_clips_like_torch_without_reading_the_device(autocast):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 4))
    reference = copy.deepcopy(model)
    parallel, engine = _engine(model, {"torch_autocast": {"enabled": True, "dtype": "bfloat16"}} if autocast else {})
    assert engine.enable_backward_allreduce is False, "one data-parallel rank has nothing to all-reduce"
    optimizer = torch.optim.AdamW(reference.parameters(), lr=1e-2)
    inputs = [torch.randn(2, 8) for _ in range(4)]
    for step in range(2):
        norms = []
        for x in inputs[2 * step:2 * step + 2]:  # two accumulation steps
            out = engine(x)
            assert out.dtype == (torch.bfloat16 if autocast else torch.float32)
            engine.backward(out.float().square().mean())
            norms.append(parallel.step(engine))
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                ref_out = reference(x)
            (ref_out.float().square().mean() / 2).backward()
        want = torch.nn.utils.clip_grad_norm_(reference.parameters(), 0.05)
        optimizer.step()
        optimizer.zero_grad()
        assert norms[0] is None and norms[1].dim() == 0
        torch.testing.assert_close(norms[1], want)
        assert want > 0.05, "the test must clip"
        for p, q in zip(model.parameters(), reference.parameters()):
            assert p.dtype == torch.float32
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    engine.destroy()
