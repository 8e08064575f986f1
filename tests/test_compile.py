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


def test_own_gradients_copies_gradients_out_of_graph_memory():
    # With blocks replayed from CUDA graphs, a .grad that autograd kept from the backward graph's
    # output would be overwritten by the next micro-batch's replay: inside an accumulation window
    # own_gradients(copy_all=True) copies it once, and leaves its copy (accumulated in place) alone.
    from megatron.parallel.compile import own_gradients

    model = torch.nn.Linear(4, 3)
    model(torch.randn(2, 4)).sum().backward()
    produced = [p.grad for p in model.parameters()]
    own_gradients(model, copy_all=True)
    copies = [p.grad for p in model.parameters()]
    for grad, copy_ in zip(produced, copies):
        assert copy_ is not grad and copy_.data_ptr() != grad.data_ptr()
        torch.testing.assert_close(copy_, grad)
    model(torch.randn(2, 4)).sum().backward()  # accumulates into the copies in place
    assert all(p.grad is c for p, c in zip(model.parameters(), copies))
    own_gradients(model, copy_all=True)
    assert all(p.grad is c for p, c in zip(model.parameters(), copies))  # copied once per window


def test_own_gradients_unshares_the_gradient_of_two_parameters():
    # Inductor can return one buffer as the gradient of two parameters (the equal output-bias
    # gradients of a parallel-residual block under bf16 autocast); kept as both .grad, clipping
    # scaled it twice and the next micro-batch was added twice. The second parameter gets a copy.
    from megatron.parallel.compile import own_gradients

    a, b = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(3))
    model = torch.nn.ParameterList([a, b])
    shared = torch.tensor([1.0, 2.0, 3.0])
    a.grad, b.grad = shared, shared.view(3)  # as autograd stores two aliasing backward outputs
    own_gradients(model)
    assert a.grad is shared and b.grad.untyped_storage().data_ptr() != a.grad.untyped_storage().data_ptr()
    for p in (a, b):
        p.grad += torch.ones(3)  # the next micro-batch, accumulated in place
    torch.testing.assert_close(a.grad, torch.tensor([2.0, 3.0, 4.0]))
    torch.testing.assert_close(b.grad, torch.tensor([2.0, 3.0, 4.0]))


def test_parallel_step_clips_shared_gradients_once():
    # Parallel.step gives compiled blocks' gradients storage of their own before it clips them in place.
    from types import SimpleNamespace

    a, b = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(3))
    model = torch.nn.ParameterList([a, b])
    parallel = Parallel(Layout(dp=1, tp=1, pp=1), model, None, compiled=True)
    parallel.clip_grad, parallel._trainable = 1.0, [a, b]
    shared = torch.tensor([3.0, 0.0, 4.0])
    a.grad, b.grad = shared, shared.view(3)
    engine = SimpleNamespace(is_gradient_accumulation_boundary=lambda: True, zero_optimization_stage=lambda: 0,
                             step=lambda: None)
    norm = parallel.step(engine)
    torch.testing.assert_close(norm, torch.tensor(50.0).sqrt())  # |(3, 0, 4)| counted for both parameters
    for p in (a, b):
        torch.testing.assert_close(p.grad, torch.tensor([3.0, 0.0, 4.0]) / 50 ** 0.5, rtol=1e-5, atol=1e-6)


def test_optimizer_is_fused_for_cuda_training_of_a_model_built_on_the_cpu():
    # The trainer builds the model on the CPU and DeepSpeed moves it to the GPU after the optimizer
    # exists; deciding `fused` from the parameters' device then gave the slower multi-tensor AdamW.
    from megatron.training.optimizer import build_optimizer

    model = torch.nn.Linear(4, 3)
    spec = {"type": "Adam", "params": {"lr": 1e-3}}
    assert build_optimizer(model, spec, 0.1, torch.device("cuda")).defaults["fused"] is True
    assert build_optimizer(model, spec, 0.1, torch.device("cpu")).defaults["fused"] is None
    assert build_optimizer(model, spec, 0.1).defaults["fused"] is None  # where the parameters are
