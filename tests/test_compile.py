"""Regional torch.compile (megatron.parallel.compile): same numbers as eager, one graph set for all
layers and both attention modes, and the switch's rules. CPU; compiling needs a C++ compiler."""
import copy
import shutil

import pytest
import torch

from megatron.model import GPTModel
from megatron.neox_arguments.model import ModelArgs
from megatron.neox_arguments.sepllm import SepLLMArgs
from megatron.parallel.layout import Layout
from megatron.parallel.parallelize import Parallel, compile_wanted

needs_compiler = pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                                    reason="torch.compile on CPU needs a C++ compiler (g++)")


def model_args(layers: int) -> ModelArgs:
    return ModelArgs(num_layers=layers, hidden_size=64, num_attention_heads=4, seq_length=64, max_position_embeddings=64,
                     pos_emb="rotary", rotary_pct=0.25, gpt_j_residual=True, no_weight_tying=True)


SEPLLM = SepLLMArgs(separator_token_ids=[3, 5], prefill_local_window_size=8, USE_SEP_ATTN_KERNEL_ACCELERATOR=False)


@needs_compiler
def test_compiled_blocks_match_eager_and_share_graphs_across_layers(dynamo_limits):
    import torch._dynamo
    from torch._dynamo.utils import counters

    from megatron.parallel.compile import compile_model, compiled_lm_loss
    from megatron.parallel.loss import lm_loss

    graphs, breaks = {}, {}
    for name, layers, sep in (("full", 2, SepLLMArgs()), ("full-deeper", 5, SepLLMArgs()),
                              ("sepllm", 2, SEPLLM), ("sepllm-deeper", 5, SEPLLM)):
        torch._dynamo.reset()
        counters.clear()
        torch.manual_seed(0)
        eager = GPTModel(model_args(layers), sep, 128)
        compiled = copy.deepcopy(eager)
        compile_model(compiled)
        for _ in range(2):  # a second batch of the same shape compiles nothing new
            ids = torch.randint(0, 128, (2, 64))
            ids[:, ::7] = 3  # separators, so SepLLM's plan differs from full attention
            labels, mask = torch.randint(0, 128, (2, 64)), torch.ones(2, 64)
            got = compiled_lm_loss()(compiled(ids), labels, mask)
            want = lm_loss(eager(ids), labels, mask)
            got.backward()
            want.backward()
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
            for (n, p), q in zip(compiled.named_parameters(), eager.parameters()):
                torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=n)
        graphs[name] = counters["stats"]["unique_graphs"]
        breaks[name] = sum(counters["graph_break"].values())
    # Nothing in the compiled graphs depends on the layer: 5 layers reuse what 2 compiled.
    assert graphs["full"] > 0 and graphs["full-deeper"] == graphs["full"]
    assert graphs["sepllm-deeper"] == graphs["sepllm"]
    # Causal attention is traced into the block; SepLLM's attention core runs between two graphs.
    assert breaks["full"] == 0 and breaks["full-deeper"] == 0
    assert breaks["sepllm"] > 0, "the SepLLM attention core should run between compiled graphs"
    assert graphs["sepllm"] > graphs["full"]


def test_compile_model_needs_transformer_blocks():
    from megatron.parallel.compile import compile_model

    with pytest.raises(ValueError, match="GPTModel"):
        compile_model(torch.nn.Linear(2, 2))


def test_compile_switch(monkeypatch):
    single, tensor, pipe = Layout(1, 1, 2), Layout(2, 1, 1), Layout(1, 2, 1)
    assert compile_wanted(False, single) is False and compile_wanted(True, single) is True
    assert compile_wanted(True, tensor) is True
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert compile_wanted(None, single) is True and compile_wanted(None, tensor) is True
    assert compile_wanted(None, pipe) is False
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert compile_wanted(None, single) is False and compile_wanted(None, tensor) is False
    with pytest.raises(ValueError, match="without pipeline parallelism only"):
        compile_wanted(True, pipe)


def test_deepspeed_throughput_timer_is_off_unless_configured():
    parallel = Parallel(Layout(1, 1, 1), torch.nn.Linear(2, 2), None)
    assert parallel.deepspeed_config({})["timers"] == {"throughput": {"enabled": False}}
    own = {"throughput": {"enabled": True, "synchronized": False}}
    assert parallel.deepspeed_config({"timers": own})["timers"] == own


def test_bf16_zero1_runs_deepspeeds_bf16_optimizer_with_fp32_gradients():
    parallel = Parallel(Layout(1, 1, 1), torch.nn.Linear(2, 2), None)
    config = parallel.deepspeed_config({"bf16": {"enabled": True}, "zero_optimization": {"stage": 1}})
    assert config["data_types"] == {"grad_accum_dtype": "fp32"}
    assert config["bf16"] == {"enabled": True, "immediate_grad_update": True}
    for other in ({"bf16": {"enabled": True}, "zero_optimization": {"stage": 2}}, {"zero_optimization": {"stage": 1}}):
        assert "data_types" not in parallel.deepspeed_config(other)
