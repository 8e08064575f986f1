"""Sep-Attention kernel == reference SepLLM attention, forward and gradients (CPU, Triton interpreter).

The Triton kernels run under TRITON_INTERPRET=1 on small shapes; the GPU file
test_sep_kernel_gpu.py runs the compiled kernels on CUDA.
"""

import pytest
import torch

if torch.cuda.is_available():
    pytest.skip("CUDA present: the compiled kernels are tested in test_sep_kernel_gpu.py", allow_module_level=True)
# tests/conftest.py sets TRITON_INTERPRET=1 before triton is imported.
pytest.importorskip("triton", reason="triton is needed for the kernel tests (requirements/requirements-test.txt)")

from megatron.sepllm.kernel import build_layout, plan_layout, sep_attention_kernel  # noqa: E402
from megatron.sepllm.kernel.ops import interpreted  # noqa: E402
from megatron.sepllm.kernel.testing import Case, check_case, random_case, random_qkv, rel_err, reference_attention  # noqa: E402
from megatron.sepllm.mask import build_attention_plan  # noqa: E402
from megatron.sepllm.reference import reference_keep_mask  # noqa: E402

if not interpreted():
    pytest.skip("megatron.sepllm.kernel was imported before TRITON_INTERPRET was set", allow_module_level=True)


@pytest.mark.parametrize("seed", range(8))
def test_random_configs_match_reference(seed):
    check_case(sep_attention_kernel, random_case(seed))


@pytest.mark.parametrize(
    "case",
    [
        # separators in every block, window smaller than a tile, query blocks past the first
        Case(L=100, D=16, vocab=8, sep=dict(prefill_local_window_size=5)),
        # window wider than several tiles: mask-free band blocks
        Case(L=96, D=16, vocab=25, sep=dict(prefill_local_window_size=40, EXCLUDE_DIAGONAL=False)),
        # grouped-query attention, non power-of-two head dim, ragged length
        Case(B=2, H=4, Hkv=1, L=77, D=24, vocab=12, sep=dict(prefill_local_window_size=9)),
        # StreamingLLM: only initial tokens beyond the window
        Case(L=90, D=16, sep=dict(prefill_local_window_size=8, streamingLLM=True)),
        # documents: far part and band stop at document starts, initial tokens per document
        Case(B=2, L=96, D=16, vocab=20, docs=True, sep=dict(prefill_local_window_size=12)),
        # left padding with batch-adaptive initial tokens and padding keys
        Case(B=3, L=64, D=16, left_pad=True, sep=dict(prefill_local_window_size=6, BATCH_ADAPTIVE_INIT_POS=True)),
        # no initial tokens and window 1 (each query sees itself and earlier separators)
        Case(L=70, D=16, sep=dict(prefill_local_window_size=1, init_tok_max_idx=-1)),
    ],
    ids=["dense-seps", "wide-window", "gqa", "streaming", "docs", "left-pad", "window-1"],
)
def test_cases_match_reference(case):
    check_case(sep_attention_kernel, case)


@pytest.mark.parametrize("wide", [2, 4])
def test_wide_mask_free_runs_match_reference(monkeypatch, wide):
    # Mask-free runs walked `wide` tiles at a time, their remainder among the masked blocks:
    # long enough rows that the far part and the far dK/dV query range span many tiles.
    from megatron.sepllm.kernel import configs as C

    monkeypatch.setattr(C, "INTERPRETER", C.BlockConfig(16, 16, 1, 1, wide))
    check_case(sep_attention_kernel, Case(B=2, H=2, Hkv=1, L=230, D=16, vocab=6, sep=dict(prefill_local_window_size=7)))
    check_case(sep_attention_kernel, Case(L=181, D=16, vocab=12, seed=wide, sep=dict(prefill_local_window_size=20)))


def test_per_layer_windows_and_full_layer_with_docs():
    # Layer 1 covers the sequence (full causal within documents): the kernel handles it too.
    case = Case(L=64, D=16, layers=3, docs=True, sep=dict(
        USE_PREFILL_LOCAL_WIN_SIZES_wrt_LAYERS=True, prefill_loc_win_size_list=[4, 500, 17]))
    _, plan, _ = case.build()
    assert plan.windows[1] is None
    for layer in range(3):
        check_case(sep_attention_kernel, case, layer=layer)


def test_fixllm_layers_use_their_own_anchors():
    case = Case(L=72, D=16, layers=2, sep=dict(
        USE_FIXED_SEP_INTERVALs=True, fixed_sep_intervals_list=[4, 9], prefill_local_window_size=6))
    for layer in range(2):
        check_case(sep_attention_kernel, case, layer=layer)
    _, plan, _ = case.build()
    layouts = [plan_layout(plan, layer, torch.device("cpu")) for layer in range(2)]
    assert layouts[0] is not layouts[1] and len(plan._sep_kernel_layouts) == 2, "one layout per kept pattern"
    assert plan_layout(plan, 1, torch.device("cpu")) is layouts[1], "layouts are cached on the plan"


def test_strided_inputs_and_custom_scale():
    # q/k/v as transposed views of [B, L, H, D] storage, as a fused QKV projection gives them.
    check_case(sep_attention_kernel, Case(L=48, D=16, H=2, Hkv=2, sep=dict(prefill_local_window_size=7)),
               layout="blhd", scale=0.3)


def test_float16_within_half_precision_tolerance():
    # bfloat16 runs on the GPU only: the Triton interpreter (3.7) gets bf16 tl.dot wrong.
    check_case(sep_attention_kernel, Case(L=64, D=32, vocab=12, sep=dict(prefill_local_window_size=10)),
               dtype=torch.float16, tol=5e-3)


def test_against_brute_force_reference_rule():
    # Same output as SDPA over reference.py's pair-by-pair mask (not only the tensor mask).
    case = Case(B=2, L=40, D=16, vocab=10, sep=dict(prefill_local_window_size=6, init_tok_max_idx=1))
    ids, plan, cfg = case.build()
    q, k, v = random_qkv(case)
    out = sep_attention_kernel(q, k, v, plan, 0)
    keep = reference_keep_mask(ids.tolist(), mode="sepllm", window=6, init_tok_max_idx=1, separator_ids=cfg.separator_token_ids)
    ref = reference_attention(q, k, v, torch.tensor(keep)[:, None])
    assert rel_err(out, ref) < 1e-5


def test_layout_metadata():
    kept = torch.tensor([[1, 0, 0, 1, 1, 0], [0, 0, 0, 0, 0, 0]], dtype=torch.bool)
    valid = torch.tensor([[1, 1, 1, 0, 1, 1], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    doc = torch.tensor([[0, 0, 1, 1, 1, 2], [0, 0, 0, 0, 0, 0]])
    lay = build_layout(kept, length=6, batch=2, device=torch.device("cpu"), doc_ids=doc, key_valid=valid)
    # kept and valid: positions 0 and 4; padding slots hold L
    assert lay.kept_pos.tolist() == [[0, 4, 6, 6, 6, 6], [6] * 6]
    assert lay.kept_count.tolist() == [[0, 1, 1, 1, 1, 2, 2], [0] * 7]
    assert lay.doc_start.tolist() == [[0, 0, 2, 2, 2, 5], [0] * 6]
    assert lay.doc_end.tolist() == [[2, 2, 5, 5, 5, 6], [6] * 6]


def test_bad_input_fails_loudly():
    case = Case(L=32, D=16, sep=dict(prefill_local_window_size=4))
    _, plan, _ = case.build()
    q, k, v = random_qkv(case)
    with pytest.raises(ValueError, match="dropout"):
        sep_attention_kernel(q, k, v, plan, 0, dropout_p=0.1)
    with pytest.raises(ValueError, match="plan"):
        sep_attention_kernel(q[:, :, :16], k[:, :, :16], v[:, :, :16], plan, 0)
    with pytest.raises(ValueError, match="heads"):
        sep_attention_kernel(q, k[:, :1].expand(-1, 3, -1, -1), v[:, :1].expand(-1, 3, -1, -1), plan, 0)
    wide = Case(L=32, D=160, sep=dict(prefill_local_window_size=4))
    with pytest.raises(ValueError, match="head dim"):
        sep_attention_kernel(*random_qkv(wide), wide.build()[1], 0)
    zero = Case(L=32, D=16, sep=dict(prefill_local_window_size=0))
    _, plan0, _ = zero.build()
    with pytest.raises(ValueError, match="window"):
        sep_attention_kernel(q, k, v, plan0, 0)
    ids = torch.randint(1, 10, (1, 8))
    bad_docs = build_attention_plan(ids, case.build()[2], 1, doc_ids=torch.tensor([[0, 0, 1, 1, 0, 0, 2, 2]]))
    q1, k1, v1 = (t[:1, :, :8] for t in (q, k, v))
    with pytest.raises(RuntimeError, match="non-decreasing"):
        sep_attention_kernel(q1, k1, v1, bad_docs, 0)
    from megatron.sepllm.kernel import configs as C
    from megatron.sepllm.kernel.launcher import launch

    with pytest.raises(ValueError, match="sequence too long"):  # checked before any kernel runs
        launch(None, (16, 65536), C.INTERPRETER, (), (), (), ())


def test_launcher_reuses_compiled_handles(monkeypatch):
    # The GPU path of launcher.launch with a stand-in for a Triton kernel: the first launch of a
    # key goes through Triton's dispatch, later ones call the compiled handle's launcher directly
    # with raw pointers, in the kernel's parameter order; misaligned pointers always dispatch.
    from megatron.sepllm.kernel import configs as C
    from megatron.sepllm.kernel import launcher

    class Handle:
        function, packed_metadata = "function", "metadata"

        def __init__(self):
            self.runs = []

        def run(self, *args):
            self.runs.append(args)

        def launch_metadata(self, *args):
            raise AssertionError("no launch hooks are installed: no launch metadata needed")

    class Kernel:
        device_caches = {}  # what a compiled (not interpreted) Triton kernel has

        def __init__(self):
            self.dispatched, self.handle = [], Handle()

        def __getitem__(self, grid):
            return lambda *args, **options: self.dispatched.append((grid, args, options)) or self.handle

    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(launcher, "_stream_getter", lambda: (lambda device: 1234))
    monkeypatch.setattr(launcher, "_handles", {})
    kernel, cfg = Kernel(), C.BlockConfig(64, 32, 4, 3)
    a, b = torch.zeros(64), torch.zeros(64)
    launcher.launch(kernel, (2, 3), cfg, (a, b), (64, 1), (10, 0.5), (16, True))
    assert kernel.dispatched == [((2, 3), (a, b, 64, 1, 10, 0.5, 16, True), dict(num_warps=4, num_stages=3))]
    launcher.launch(kernel, (2, 3), cfg, (a, b), (64, 1), (11, 0.25), (16, True))  # new L/W/scale: same kernel
    assert len(kernel.dispatched) == 1
    assert kernel.handle.runs == [(2, 3, 1, 1234, "function", "metadata", None, None, None,
                                   a.data_ptr(), b.data_ptr(), 64, 1, 11, 0.25, 16, True)]
    launcher.launch(kernel, (2, 3), cfg, (a, b), (128, 1), (11, 0.25), (16, True))  # other strides: dispatch
    launcher.launch(kernel, (2, 3), cfg, (a, b), (64, 1), (11, 0.25), (32, True))  # other constexprs: dispatch
    assert len(kernel.dispatched) == 3
    for _ in range(2):
        launcher.launch(kernel, (2, 3), cfg, (a[1:], b[1:]), (64, 1), (11, 0.25), (16, True))  # 4-byte offsets
    assert len(kernel.dispatched) == 5 and len(kernel.handle.runs) == 1


def test_compiled_graph_does_not_recompile_for_new_batches():
    # The custom ops are opaque to torch.compile and all metadata shapes are fixed, so batches
    # with other separator counts and documents reuse the same graph.
    import torch._dynamo

    torch._dynamo.reset()
    case = Case(L=48, D=16, docs=True, sep=dict(prefill_local_window_size=5))

    def step(q, k, v, plan):
        return sep_attention_kernel(q, k, v, plan, 0).float().square().sum()

    compiled = torch.compile(step, backend="aot_eager", fullgraph=True, dynamic=False)
    _, plan, _ = case.build()
    q, k, v = random_qkv(case)
    compiled(q, k, v, plan).backward()
    with torch._dynamo.config.patch(error_on_recompile=True):
        for seed in (1, 2):
            other = Case(L=48, D=16, docs=True, vocab=6 + 10 * seed, seed=seed, sep=dict(prefill_local_window_size=5))
            _, plan2, _ = other.build()
            loss = compiled(q, k, v, plan2)
            loss.backward()
            want = reference_attention(q, k, v, plan2.dense_mask(0)).square().sum()
            assert abs(float(loss.detach()) - float(want.detach())) < 1e-4 * abs(float(want.detach()))


def _kernel_model(monkeypatch, windows):
    """A small SepLLM GPTModel whose passes run the (interpreted) kernel, as on CUDA; ids; masked-path logits."""
    from dataclasses import replace

    from megatron.model import GPTModel
    from megatron.neox_arguments.model import ModelArgs
    from megatron.neox_arguments.sepllm import SepLLMArgs

    args = ModelArgs(num_layers=len(windows), hidden_size=32, num_attention_heads=2, seq_length=48, pos_emb="rotary",
                     hidden_dropout=0.0, attention_dropout=0.0)
    sep = SepLLMArgs(separator_token_ids=[5, 9], USE_PREFILL_LOCAL_WIN_SIZES_wrt_LAYERS=True,
                     prefill_loc_win_size_list=list(windows), USE_SEP_ATTN_KERNEL_ACCELERATOR=True)
    torch.manual_seed(0)
    model = GPTModel(args, sep, 40)
    ids = torch.randint(10, 40, (2, 48), generator=torch.Generator().manual_seed(0))
    ids[:, 4::7] = 5
    masked = model(ids)  # on CPU the builder leaves the kernel off: the masked-SDPA path
    build = model.context_builder.build
    monkeypatch.setattr(model.context_builder, "build", lambda *a, **k: replace(build(*a, **k), use_kernel=True))
    model.context_builder.clear()
    return model, ids, masked


def test_model_blocks_trace_the_kernel_into_one_graph_each(monkeypatch, dynamo_limits):
    # ForwardContext.for_layer hands each block its kernel inputs, so a compiled block never reads its
    # layer index: no graph break around attention, one graph shared by blocks of the same window
    # (a full-attention layer traces causal SDPA), and the model computes what the masked path does.
    import torch._dynamo
    from torch._dynamo.utils import counters

    from megatron.parallel.compile import compile_model

    model, ids, masked = _kernel_model(monkeypatch, [64, 6, 6])
    torch.testing.assert_close(model(ids), masked, rtol=0, atol=1e-5)  # eager, through the kernel

    torch._dynamo.reset()
    counters.clear()
    compile_model(model, backend="aot_eager")
    model.context_builder.clear()
    logits = model(ids)
    logits.float().square().mean().backward()
    assert not counters["graph_break"], dict(counters["graph_break"])
    # the causal block and the two window-6 blocks (torch's own LayerNorm as the final norm is not traced)
    assert counters["stats"]["unique_graphs"] == 2, dict(counters["stats"])
    torch.testing.assert_close(logits, masked, rtol=0, atol=1e-5)
    # Recomputation under activation checkpointing resolves the same layers again: same gradients.
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    model.enable_activation_checkpointing(1)
    model.context_builder.clear()
    model(ids).float().square().mean().backward()
    for p, g in zip(model.parameters(), grads):
        torch.testing.assert_close(p.grad, g, rtol=1e-5, atol=1e-7)
    model.enable_activation_checkpointing(0)
    other = ids.clone()
    other[:, 2::5] = 9
    model.context_builder.clear()
    with torch._dynamo.config.patch(error_on_recompile=True):
        model(other)


def test_compiled_blocks_with_many_windows_compile_each_or_fail_loudly(monkeypatch, dynamo_limits):
    # A graph per distinct window: compile_model allows as many as the config has, and going past the
    # recompile limit raises instead of running the blocks uncompiled.
    import torch._dynamo
    from torch._dynamo.exc import FailOnRecompileLimitHit
    from torch._dynamo.utils import counters

    from megatron.parallel.compile import compile_model

    model, ids, masked = _kernel_model(monkeypatch, [3, 4, 5, 6, 7, 8])
    torch._dynamo.reset()
    counters.clear()
    with torch._dynamo.config.patch(recompile_limit=2):
        compile_model(model, backend="aot_eager")  # raises the limit to what the six windows need
        assert torch._dynamo.config.recompile_limit >= 12
        torch.testing.assert_close(model(ids), masked, rtol=0, atol=1e-5)
    assert counters["stats"]["unique_graphs"] == 6, dict(counters["stats"])  # one per window
    assert not counters["graph_break"], dict(counters["graph_break"])

    torch._dynamo.reset()
    model.context_builder.clear()
    with torch._dynamo.config.patch(recompile_limit=2), pytest.raises(FailOnRecompileLimitHit):
        model(ids)


def test_a_block_given_an_unresolved_context_refuses_to_skip_the_kernel(monkeypatch):
    # The kernel is chosen in one place, ForwardContext.for_layer; a block handed the pass's context
    # as it is must not quietly compute the masked path instead.
    model, ids, _ = _kernel_model(monkeypatch, [64, 6, 6])
    ctx = model.context_builder(ids)
    hidden = model.embedding(ids, ctx)
    model.layers[0](hidden, ids, ctx=ctx)  # a full-attention layer: causal SDPA either way
    with pytest.raises(RuntimeError, match="layer 1: .*ctx.for_layer"):
        model.layers[1](hidden, ids, ctx=ctx)
    model.layers[1](hidden, ids, ctx=ctx.for_layer(1))
