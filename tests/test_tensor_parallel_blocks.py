"""Tensor-parallel blocks on 2 gloo ranks give the whole model's loss and gradients, block type by block type.

One launch of this file as a worker (`torchrun --nproc_per_node 2 tests/test_tensor_parallel_blocks.py OUT.json`)
builds each case's model whole, shards a copy with `tensor_parallelize`, and compares one forward and
backward: the loss, and every parameter's gradient against this rank's slice of the whole model's
(compiled cases with the compiled vocab-parallel loss); the vocab-parallel losses are also checked
on their own against the whole vocabulary's.
The cases cover both residuals with and without sequence parallelism, so parallel-residual blocks run
both as FusedBranchesBlock (one collective each way for both branches) and, with hidden dropout
listed but off in eval mode, the per-branch path; fused cases with and without sequence parallelism
run under torch.compile too.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

MODEL = {
    "num_layers": 2, "hidden_size": 32, "num_attention_heads": 4, "seq_length": 16, "max_position_embeddings": 16,
    "pos_emb": "rotary", "rotary_pct": 0.5, "init_method_std": 0.1, "separator_token_ids": [3, 5],
    "prefill_local_window_size": 4, "USE_SEP_ATTN_KERNEL_ACCELERATOR": False, "precision": "fp32",
}
# name -> (settings, sequence_parallel, compiled, block class expected after sharding)
CASES = {
    "parallel": ({"gpt_j_residual": True, "use_bias_in_attn_linear": True}, False, False, "FusedBranchesBlock"),
    "parallel_sp": ({"gpt_j_residual": True}, True, False, "FusedBranchesBlock"),
    "parallel_tied_sp_gqa": ({"gpt_j_residual": True, "gpt_j_tied": True, "num_kv_heads": 2, "activation": "swiglu",
                              "mlp_multiple_of": 16}, True, False, "FusedBranchesBlock"),
    "parallel_dropout_sp": ({"gpt_j_residual": True, "hidden_dropout": 0.1}, True, False, "TransformerBlock"),
    "sequential": ({"gpt_j_residual": False, "norm": "rmsnorm"}, False, False, "TransformerBlock"),
    "sequential_sp": ({"gpt_j_residual": False}, True, False, "TransformerBlock"),
    "parallel_sp_compiled": ({"gpt_j_residual": True, "USE_ORIGINAL_FULL_ATTEN": True}, True, True, "FusedBranchesBlock"),
    "parallel_compiled": ({"gpt_j_residual": True}, False, True, "FusedBranchesBlock"),
}
VOCAB = 64


def launch(out: Path, device: str = "cpu", cases: tuple[str, ...] = ()) -> list[dict]:
    from megatron.parallel.distributed import free_port

    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           str(Path(__file__).resolve()), str(out), device, *cases]
    proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return launch(tmp_path_factory.mktemp("tp_blocks") / "result.json")


def check_case(results: list[dict], case: str) -> None:
    for rank_result in results:
        got = rank_result[case]
        assert got["block"] == CASES[case][3]
        assert got["loss_diff"] < 1e-5, got
        assert got["grads_compared"] > 10
        assert got["max_grad_diff"] < 1e-5, got["worst"]
        assert got["grad_scale"] > 1e-3  # the gradients compared are not all zero


@pytest.mark.multiproc
@pytest.mark.parametrize("case", list(CASES))
def test_tensor_parallel_block_matches_whole_model(results, case):
    check_case(results, case)


@pytest.mark.gpu
@pytest.mark.multiproc
def test_compiled_tensor_parallel_blocks_on_one_gpu(tmp_path):
    """The CUDA (inductor) graphs, both ranks on one GPU through gloo. Compiled on CUDA, in-place
    collectives inside an autograd Function's backward once lost their result while the CPU graphs
    were right. Gloo has no CUDA reduce-scatter, so the sequence-parallel cases need two GPUs
    (tests/test_parallel_gpu.py)."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    cases = ("parallel", "parallel_compiled", "sequential")
    results = launch(tmp_path / "result.json", "cuda", cases)
    for case in cases:
        check_case(results, case)
    check_losses(results)


def _case(name: str, settings: dict, sequence_parallel: bool, compiled: bool, rank: int, group, device) -> dict:
    import copy

    import torch

    from megatron.model import GPTModel
    from megatron.neox_arguments import NeoXArgs
    from megatron.parallel.compile import compiled_vocab_parallel_lm_loss
    from megatron.parallel.loss import lm_loss, vocab_parallel_lm_loss
    from megatron.parallel.tensor_parallel import shard, split_dim, tensor_parallelize

    args = NeoXArgs.from_dict({**MODEL, **settings})
    torch.manual_seed(5)
    whole = GPTModel(args.model, args.sepllm, VOCAB)
    model = copy.deepcopy(whole)
    tensor_parallelize(model, rank=rank, size=2, group=group, sequence_parallel=sequence_parallel)
    whole.to(device), model.to(device)
    if compiled:
        from megatron.parallel.compile import compile_model

        compile_model(model)
    if settings.get("hidden_dropout"):
        whole.eval(), model.eval()  # dropout listed, so the block takes the per-branch path, but off
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(0, 16, (2, MODEL["seq_length"]), generator=g).to(device)  # ids 3 and 5 are separators
    labels = torch.randint(0, VOCAB, ids.shape, generator=g).to(device)
    mask = torch.ones(ids.shape, device=device)

    want = lm_loss(whole(ids), labels, mask)
    want.backward()
    got = (compiled_vocab_parallel_lm_loss() if compiled else vocab_parallel_lm_loss)(model(ids), labels, mask)
    got.backward()

    reference = dict(whole.named_parameters())
    worst, max_diff, scale, compared = "", 0.0, 0.0, 0
    for n, p in model.named_parameters():
        n = n.replace("_orig_mod.", "")
        expected = shard(reference[n].grad, split_dim(n), rank, 2)
        diff = float((p.grad - expected).abs().max())
        compared += 1
        scale = max(scale, float(expected.abs().max()))
        if diff >= max_diff:
            worst, max_diff = n, diff
    return {"block": type(model.layers[0]).__name__, "loss_diff": abs(float(got) - float(want)),
            "max_grad_diff": max_diff, "worst": f"{worst}: {max_diff:.2e}", "grad_scale": scale,
            "grads_compared": compared}


def check_losses(results: list[dict]) -> None:
    for rank_result in results:
        for name, (loss_diff, grad_diff) in rank_result["loss"].items():
            assert loss_diff < 2e-6 and grad_diff < 1e-7, (name, loss_diff, grad_diff)


@pytest.mark.multiproc
def test_vocab_parallel_loss_matches_the_whole_vocabulary_eager_and_compiled(results):
    check_losses(results)


def _losses(rank: int, device) -> dict:
    """Each vocab-parallel loss against lm_loss over the whole vocabulary: (loss diff, max grad diff)."""
    import torch
    from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

    from megatron.parallel.compile import compiled_vocab_parallel_lm_loss
    from megatron.parallel.loss import lm_loss, vocab_parallel_lm_loss

    g = torch.Generator().manual_seed(3)
    whole = (torch.randn(2, 16, VOCAB, generator=g) * 5).to(device).requires_grad_()
    labels = torch.randint(0, VOCAB, (2, 16), generator=g).to(device)  # in both ranks' halves
    mask = (torch.rand(2, 16, generator=g) > 0.3).float().to(device)
    want = lm_loss(whole, labels, mask)
    want.backward()
    ours = {"eager": vocab_parallel_lm_loss, "compiled": compiled_vocab_parallel_lm_loss(),
            "megatron-core": lambda x, y, m: (vocab_parallel_cross_entropy(x.float(), y) * m).sum() / m.sum()}
    result = {}
    for name, fn in ours.items():
        x = whole.detach().chunk(2, dim=-1)[rank].clone().requires_grad_()
        got = fn(x, labels, mask)
        got.backward()
        expected = whole.grad.chunk(2, dim=-1)[rank]
        result[name] = (abs(float(got) - float(want)), float((x.grad - expected).abs().max()))
    return result


def _worker(out: str, device: str = "cpu", *cases: str) -> None:
    """`device` cuda: both ranks on the one GPU (gloo moves CUDA tensors through the host), which
    checks the compiled (CUDA inductor) paths on a single-GPU machine. `cases`: these only."""
    sys.path.insert(0, str(ROOT))
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo")
    device = torch.device(device, 0) if device == "cuda" else torch.device(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    from megatron.core import parallel_state

    from megatron.parallel.groups import init_megatron_core
    from megatron.parallel.layout import Layout

    init_megatron_core(Layout(tp=2, pp=1, dp=1))
    group = parallel_state.get_tensor_model_parallel_group()
    rank = dist.get_rank()
    result = {name: _case(name, settings, sp, compiled, rank, group, device)
              for name, (settings, sp, compiled, _) in CASES.items() if not cases or name in cases}
    result["loss"] = _losses(rank, device)
    gathered = [None, None]
    dist.all_gather_object(gathered, result)
    if rank == 0:
        Path(out).write_text(json.dumps(gathered))
    dist.destroy_process_group()


if __name__ == "__main__":
    _worker(*sys.argv[1:])
