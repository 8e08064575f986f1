"""3D parallelism on CPU (gloo): every layout trains to the losses of one process with the same global batch.

Each layout is one launch of this file as a worker (`python tests/test_parallel.py OUT.json A.yml B.yml`),
which trains a vanilla and a SepLLM config in turn, so the process start-up is paid once per layout.
The two configs between them cover tied and untied embeddings, parallel and sequential residuals,
ALiBi (per-head slopes split with the heads) and rotary, GQA, SwiGLU, document masks passed along the pipeline, activation checkpointing, sequence
parallelism and active gradient clipping (so the gradient norm must be right in every layout).
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CHAR_SEPARATORS = [ord(c) for c in ".,?!;: \t\n"]
STEPS = 5

COMMON = {
    "num_layers": 4, "hidden_size": 64, "num_attention_heads": 4, "seq_length": 64, "max_position_embeddings": 64,
    "pos_emb": "rotary", "rotary_pct": 0.25, "make_vocab_size_divisible_by": 128,
    "separator_token_ids": CHAR_SEPARATORS, "init_tok_max_idx": 2, "prefill_local_window_size": 8,
    "USE_SEP_ATTN_KERNEL_ACCELERATOR": False,
    "train_iters": STEPS, "train_micro_batch_size_per_gpu": 4,
    "optimizer": {"type": "Adam", "params": {"lr": 3.0e-3, "betas": [0.9, 0.95], "eps": 1.0e-8}},
    "min_lr": 3.0e-4, "lr_decay_style": "cosine", "warmup": 0.2, "weight_decay": 0.1,
    "gradient_clipping": 0.1, "zero_optimization": {"stage": 1}, "precision": "fp32", "seed": 11,
    "split": "90,10,0", "tokenizer_type": "CharLevelTokenizer", "eval_interval": 1000, "eval_iters": 1,
    "log_interval": 1, "num_workers": 0,
}
MODELS = {
    "vanilla": {"USE_ORIGINAL_FULL_ATTEN": True, "gpt_j_residual": True, "no_weight_tying": False, "pos_emb": "alibi"},
    "sepllm": {
        "gpt_j_residual": False, "no_weight_tying": True, "activation": "swiglu", "mlp_multiple_of": 32, "norm": "rmsnorm",
        "num_kv_heads": 2, "reset_attention_mask": True, "reset_position_ids": True,
        "checkpoint_activations": True, "checkpoint_num_layers": 1,
    },
}
# name -> (processes, settings). Global batch 8 everywhere: micro 4 x accumulation x data-parallel ranks.
LAYOUTS = {
    "one": (1, {"gradient_accumulation_steps": 2}),
    "tp2": (2, {"model_parallel_size": 2, "gradient_accumulation_steps": 2}),
    "pp2": (2, {"pipe_parallel_size": 2, "gradient_accumulation_steps": 2}),
    "dp2": (2, {"gradient_accumulation_steps": 1}),
    "tp2pp2": (4, {"model_parallel_size": 2, "pipe_parallel_size": 2, "gradient_accumulation_steps": 2}),
}
# Only where tensor parallelism is on (a single process has nothing to split): the SepLLM model runs
# sequence-parallel, the vanilla one partitions its checkpointed activations over the tensor-parallel ranks.
TENSOR_PARALLEL_EXTRAS = {
    "sepllm": {"sequence_parallel": True},
    "vanilla": {"checkpoint_activations": True, "checkpoint_num_layers": 1, "partition_activations": True},
}


def write_config(folder: Path, name: str, corpus: str, model: str, layout: str, **extra) -> Path:
    cfg = {**COMMON, **MODELS[model], **LAYOUTS[layout][1], "data_path": corpus, **extra}
    if cfg.get("model_parallel_size", 1) > 1:
        cfg.update(TENSOR_PARALLEL_EXTRAS[model])
    path = folder / f"{name}.yml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def launch(folder: Path, nproc: int, configs: list[Path], timeout: int = 600) -> list[dict]:
    """Run this file as a worker on `nproc` gloo ranks; returns one {"start", "losses"} per config."""
    from megatron.parallel.distributed import free_port

    out = folder / f"result_{os.urandom(4).hex()}.json"
    worker = [str(Path(__file__).resolve()), str(out), *map(str, configs)]
    if nproc == 1:
        cmd = [sys.executable, *worker]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
               "--master_port", str(free_port()), *worker]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return json.loads(out.read_text())


def build_corpus(out: Path) -> str:
    """The character-level training corpus of these runs, tokenized into `out`; returns its data_path."""
    from megatron.data.preprocess import preprocess
    from megatron.data.tokenizers import build_tokenizer

    preprocess(inputs=str(ROOT / "tests" / "fixtures" / "train_corpus.txt"), output_prefix=str(out / "corpus"),
               tokenizer=build_tokenizer("CharLevelTokenizer", None), txt_mode="paragraph",
               append_eod=True, progress=False, log=lambda _: None)
    return str(out / "corpus_text_document")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return build_corpus(tmp_path_factory.mktemp("corpus"))


SAVED_AT = 3  # TP=2 and PP=2 SepLLM runs save here; their launches then resume from it


# Launches that also resume the TP=2 SepLLM checkpoint of step SAVED_AT, resharded to their layout
# with its optimizer state (the second and last steps then match TP=2 continuing only if Adam's
# moments and step count came across).
RESHARDED_INTO = {"pp2": dict(tp=1, pp=2, dp=1), "dp2": dict(tp=1, pp=1, dp=2)}
# The TP=2 launch also trains the SepLLM model in bf16 with ZeRO-1, which DeepSpeed runs with its
# BF16_Optimizer (other optimizer files); resharded the same way, PP=2 and DP=2 resume it too, and
# DP=2 once more without its optimizer state, to show what the comparison would miss otherwise.
BF16 = {"precision": "bfloat16"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, corpus):
    """Results per layout, each layout launched once, on first use: {name: {"start", "losses", "valid"}}.

    Besides the two models, the TP=2 and PP=2 launches resume their SepLLM run from its step-3
    checkpoint ("resumed", same layout, optimizer included), and the PP=2 and DP=2 launches resume
    the TP=2 checkpoint resharded to their layout ("resharded", optimizer included). The TP=2 launch
    trains the SepLLM model in bf16 too ("bf16"), which PP=2 and DP=2 resume resharded
    ("resharded_bf16"), DP=2 also without its optimizer state ("resharded_bf16_no_optim").
    """
    folder = tmp_path_factory.mktemp("parallel")
    cache: dict[str, dict] = {}

    def get(layout: str) -> dict:
        if layout in cache:
            return cache[layout]
        runs_ = {m: {} for m in MODELS}
        if layout in ("tp2", "pp2"):
            checkpoints = str(folder / f"ck_{layout}")
            runs_["sepllm"] = {"save": checkpoints, "extra_save_iters": [SAVED_AT]}
            runs_["resumed"] = {"load": checkpoints, "iteration": SAVED_AT}
        if layout == "tp2":
            runs_["bf16"] = {**BF16, "save": str(folder / "ck_tp2_bf16"), "extra_save_iters": [SAVED_AT]}
            runs_["compiled"] = {"torch_compile": True}  # SepLLM blocks, sequence-parallel, under torch.compile
        if layout in RESHARDED_INTO:
            from megatron.parallel.layout import Layout
            from megatron.parallel.reshard import reshard

            get("tp2")
            for source, run, extra in (("ck_tp2", "resharded", {}), ("ck_tp2_bf16", "resharded_bf16", BF16)):
                target = folder / f"{source}_as_{layout}"
                reshard(folder / source / f"global_step{SAVED_AT}", target, Layout(**RESHARDED_INTO[layout]))
                runs_[run] = {**extra, "load": str(target)}
            if layout == "dp2":
                runs_["resharded_bf16_no_optim"] = {**runs_["resharded_bf16"], "no_load_optim": True}
        configs = [write_config(folder, f"{layout}_{name}", corpus, name if name in MODELS else "sepllm", layout, **extra)
                   for name, extra in runs_.items()]
        results = launch(folder, LAYOUTS[layout][0], configs)
        cache[layout] = {"folder": folder, **dict(zip(runs_, results))}
        return cache[layout]

    return get


def assert_same_losses(got: dict, want: dict) -> None:
    for model in MODELS:
        assert len(got[model]["losses"]) == STEPS
        assert got[model]["losses"] == pytest.approx(want[model]["losses"], rel=2e-5, abs=2e-5), model
        assert got[model]["valid"] == pytest.approx(want[model]["valid"], rel=2e-5, abs=2e-5), model


@pytest.mark.multiproc
@pytest.mark.parametrize("layout", ["tp2", "pp2", "dp2"])
def test_layout_matches_one_process(runs, layout):
    assert_same_losses(runs(layout), runs("one"))


@pytest.mark.multiproc
def test_compiled_tensor_parallel_blocks_match_one_process(runs):
    got, want = runs("tp2")["compiled"], runs("one")["sepllm"]
    assert got["compiled"] and not runs("tp2")["sepllm"]["compiled"]
    assert got["losses"] == pytest.approx(want["losses"], rel=2e-5, abs=2e-5)
    assert got["valid"] == pytest.approx(want["valid"], rel=2e-5, abs=2e-5)


@pytest.mark.multiproc
@pytest.mark.slow
def test_tensor_x_pipeline_matches_one_process(runs):
    assert_same_losses(runs("tp2pp2"), runs("one"))


def test_reference_run_learns(runs):
    for model in MODELS:
        losses = runs("one")[model]["losses"]
        assert losses[-1] < losses[0] - 0.3, losses


@pytest.mark.multiproc
@pytest.mark.parametrize("layout", ["tp2", "pp2"])
def test_resume_in_the_same_layout_is_exact(runs, layout):
    run = runs(layout)
    assert run["resumed"]["start"] == SAVED_AT
    assert run["resumed"]["losses"] == run["sepllm"]["losses"][SAVED_AT:]


@pytest.mark.multiproc
@pytest.mark.parametrize("layout", sorted(RESHARDED_INTO))
def test_tensor_parallel_checkpoint_resumes_in_another_layout_with_its_optimizer(runs, layout):
    """Saved by TP=2 at step 3, resharded to PP=2 or DP=2 (ZeRO-1 partitions of another shape),
    resumed to step 5: the same losses as TP=2 continuing, so weights, data position, LR schedule,
    fp32 master weights, Adam's moments and step count all came across."""
    resharded = runs(layout)["resharded"]
    assert resharded["start"] == SAVED_AT and len(resharded["losses"]) == STEPS - SAVED_AT
    continuing = runs("tp2")["sepllm"]["losses"][SAVED_AT:]
    assert resharded["losses"] == pytest.approx(continuing, rel=2e-5, abs=2e-5)
    assert resharded["valid"] == pytest.approx(runs("tp2")["sepllm"]["valid"], rel=2e-5, abs=2e-5)


# bf16 layouts sum in another order: on CPU the resharded PP=2 / DP=2 losses were within 6e-5 of
# TP=2's (already at the first resumed step, before any update); resuming without the optimizer
# state missed the second step by 0.04.
BF16_TOLERANCE = 5e-4


@pytest.mark.multiproc
@pytest.mark.parametrize("layout", sorted(RESHARDED_INTO))
def test_bf16_checkpoint_resumes_in_another_layout_with_its_optimizer(runs, layout):
    """The same for bf16 ZeRO-1 (DeepSpeed's BF16_Optimizer, whose partitions keep their padding)."""
    continuing = runs("tp2")["bf16"]
    resharded = runs(layout)["resharded_bf16"]
    assert resharded["start"] == SAVED_AT and len(resharded["losses"]) == STEPS - SAVED_AT
    assert resharded["losses"] == pytest.approx(continuing["losses"][SAVED_AT:], rel=0, abs=BF16_TOLERANCE)
    assert resharded["valid"] == pytest.approx(continuing["valid"], rel=0, abs=BF16_TOLERANCE)
    if layout == "dp2":
        # The tolerance is tight enough to notice a lost optimizer state: the first resumed step only
        # evaluates the loaded weights, the second shows the update Adam made without its moments.
        without = runs(layout)["resharded_bf16_no_optim"]
        assert without["losses"][0] == pytest.approx(resharded["losses"][0], rel=0, abs=BF16_TOLERANCE)
        assert abs(without["losses"][1] - continuing["losses"][-1]) > 20 * BF16_TOLERANCE, without["losses"]


def _assert_same_content(got, want, where: str) -> None:
    import torch

    assert type(got) is type(want), where
    if torch.is_tensor(want):
        assert got.dtype == want.dtype and got.shape == want.shape and torch.equal(got, want), where
    elif isinstance(want, dict):
        assert got.keys() == want.keys(), where  # DeepSpeed looks keys up; their order means nothing
        for key in want:
            _assert_same_content(got[key], want[key], f"{where}.{key}")
    elif isinstance(want, (list, tuple)):
        assert len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want)):
            _assert_same_content(g, w, f"{where}[{i}]")
    elif hasattr(want, "__dict__"):  # DeepSpeed's loss scaler and fragment addresses
        _assert_same_content(vars(got), vars(want), where)
    else:
        assert got == want, where


@pytest.mark.multiproc
@pytest.mark.parametrize("source", ["ck_tp2", "ck_tp2_bf16"], ids=["zero1", "bf16-optimizer"])
def test_resharding_into_the_same_layout_writes_deepspeeds_own_optimizer_files(runs, tmp_path, source):
    """ZeRO-1 (fp32) and BF16_Optimizer files, written by DeepSpeed under TP=2, come out of resharding
    into TP=2 identical (partitions, paddings, slice mappings, Adam's state), also by way of DP=2."""
    import torch

    from megatron.parallel.layout import Layout
    from megatron.parallel.reshard import reshard

    original = runs("tp2")["folder"] / source / f"global_step{SAVED_AT}"
    optim_files = sorted(p.name for p in original.glob("*optim_states.pt"))
    assert optim_files and all(n.startswith("bf16_") == (source == "ck_tp2_bf16") for n in optim_files)
    via_dp2, _ = reshard(original, tmp_path / "dp2", Layout(tp=1, pp=1, dp=2))
    assert len(list(via_dp2.glob("*optim_states.pt"))) == 2
    for start, out in ((original, "same"), (via_dp2, "back")):
        written, notices = reshard(start, tmp_path / out, Layout(tp=2, pp=1, dp=1))
        assert notices == [] and sorted(p.name for p in written.glob("*optim_states.pt")) == optim_files
        for name in optim_files:
            _assert_same_content(torch.load(written / name, weights_only=False),
                                 torch.load(original / name, weights_only=False), f"{out}/{name}")
        for rank in range(2):
            name = f"mp_rank_{rank:02d}_model_states.pt"
            _assert_same_content(torch.load(written / name, weights_only=False)["param_shapes"],
                                 torch.load(original / name, weights_only=False)["param_shapes"], f"{out}/{name}")


@pytest.mark.multiproc
def test_reshard_round_trip_keeps_every_weight(runs, tmp_path):
    import torch

    from megatron.checkpointing.export import read_model_state_dict
    from megatron.parallel.reshard import read_model, read_optimizer, source_layout

    sys.path.insert(0, str(ROOT / "tools"))
    from reshard_checkpoint import main as reshard_main

    source = runs("tp2")["folder"] / "ck_tp2" / f"global_step{SAVED_AT}"
    original = read_model(source, 4)
    original_optim = read_optimizer(source, 4)
    assert source_layout(source) == (2, 1)
    hops = [("a", ["--model_parallel_size", "2", "--pipe_parallel_size", "2"]), ("b", ["--pipe_parallel_size", "4", "--data_parallel_size", "2"]),
            ("c", [])]
    previous = source
    for name, sizes in hops:
        assert reshard_main([str(previous), str(tmp_path / name), *sizes]) == 0
        previous = tmp_path / name  # a save directory: followed through `latest`
    assert source_layout(tmp_path / "a" / f"global_step{SAVED_AT}") == (2, 2)
    assert source_layout(tmp_path / "b" / f"global_step{SAVED_AT}") == (1, 4)
    final = read_model_state_dict(tmp_path / "c" / f"global_step{SAVED_AT}")  # the export path reads TP=PP=1
    assert final.keys() == original.keys()
    assert all(torch.equal(final[k], original[k]) for k in original)
    # The optimizer state went through the same hops (ZeRO partitions re-cut each time) unchanged.
    final_optim = read_optimizer(tmp_path / "c" / f"global_step{SAVED_AT}", 4)
    assert torch.equal(final_optim.step, original_optim.step) and final_optim.param_groups == original_optim.param_groups
    for key, tensors in original_optim.tensors.items():
        assert tensors.keys() == final_optim.tensors[key].keys() == {n for n in original if not n.endswith("_extra_state")}
        assert all(torch.equal(final_optim.tensors[key][n], t) for n, t in tensors.items()), key
    assert reshard_main([str(source), str(tmp_path / "c")]) == 2  # never overwrites a checkpoint
    assert reshard_main([str(source), str(tmp_path / "d"), "--model_parallel_size", "8"]) == 2


# ------------------------------------------------------------------------------ fast checks


def test_layout_coordinates_follow_deepspeed_and_megatron_order():
    from megatron.parallel.layout import Layout

    layout = Layout(tp=2, pp=3, dp=4)
    coords = [layout.coords(r) for r in range(layout.world)]
    assert len(set(coords)) == 24 and all(layout.rank(*c) == r for r, c in enumerate(coords))
    assert coords[1] == (1, 0, 0) and coords[2] == (0, 0, 1) and coords[8] == (0, 1, 0)


def test_optimizer_formats_resharding_cannot_carry_are_named():
    from megatron.parallel.reshard import ReshardError, _check_zero_format

    bf16_optimizer = {"base_optimizer_state": {}, "single_partition_of_fp32_groups": [], "group_paddings": [],
                      "partition_count": []}
    assert _check_zero_format("zero_pp_rank_0_mp_rank_00_optim_states.pt", {"zero_stage": 1, "base_optimizer_state": {}}) is False
    assert _check_zero_format("bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt", {"zero_stage": 2, "base_optimizer_state": {}}) is False
    assert _check_zero_format("bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt", bf16_optimizer) is True
    cases = [("zero_pp_rank_0_mp_rank_00_optim_states.pt", bf16_optimizer, "an unknown optimizer"),
             ("bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt", {"base_optimizer_state": {}}, "an unknown optimizer"),
             ("zero_pp_rank_0_mp_rank_00_optim_states.pt", {"zero_stage": 3}, "ZeRO stage 3"),
             ("zero_pp_rank_0_mp_rank_00_optim_states.pt", {"zero_stage": 1, "base_optimizer_state": []}, "elastic")]
    for name, sd, what in cases:
        with pytest.raises(ReshardError, match=f"{what}.*no_load_optim: true"):
            _check_zero_format(name, sd)


def test_optimizer_partitions_put_the_alignment_padding_where_deepspeed_does():
    """Groups of 5 and 1 values over 2 ranks (padded to 8 and 4), the layouts derived from DeepSpeed
    0.19.8's BF16_Optimizer and DeepSpeedZeroOptimizer: the TP=2 model's groups need no padding, so
    the end-to-end tests cannot tell where it goes."""
    from collections import OrderedDict

    import torch
    from deepspeed.utils.tensor_fragment import fragment_address

    from megatron.parallel.reshard import OPTIMIZER_KEYS, OptimizerState, _flat_group, _rank_optimizer_state

    shapes = [OrderedDict(a=torch.Size([3]), b=torch.Size([2])), OrderedDict(c=torch.Size([1]))]
    flat = {key: [torch.arange(1.0, 6.0) * (k + 1), torch.tensor([7.0 * (k + 1)])] for k, key in enumerate(OPTIMIZER_KEYS)}
    expected_partitions = [[[1, 2, 3, 4], [7, 0]], [[5, 0, 0, 0], [0, 0]]]  # [rank][group], padding last
    expected_mappings = [[{"a": (3, 0), "b": (1, 3)}, {"c": (1, 0)}], [{"b": (1, 0)}, {}]]
    for bf16_optimizer in (True, False):
        optim = OptimizerState(tensors={}, step=torch.tensor(3.0), param_groups=[{"params": [0]}, {"params": [1]}],
                               common={"clip_grad": 0.1}, extra={}, bf16_optimizer=bf16_optimizer)
        sds = [_rank_optimizer_state(optim, flat, shapes, d, 2) for d in range(2)]
        for d, sd in enumerate(sds):
            for g in range(2):
                whole = torch.tensor(expected_partitions[d][g], dtype=torch.float32)
                state = sd["base_optimizer_state"]["state"][g]
                assert torch.equal(state["exp_avg"], 2 * whole) and torch.equal(state["exp_avg_sq"], 3 * whole)
                lean = whole if bf16_optimizer else whole[: [[4, 1], [1, 0]][d][g]]  # ZeRO drops the padding
                assert torch.equal(sd["single_partition_of_fp32_groups"][g], lean)
                assert sd["param_slice_mappings"][g] == {n: fragment_address(numel=m, start=s)
                                                         for n, (m, s) in expected_mappings[d][g].items()}
            assert sd["partition_count"] == [2, 2]
        # BF16_Optimizer counts the group's whole padding on the last rank, ZeRO each rank's own.
        assert [sd["group_paddings"] for sd in sds] == ([[0, 0], [3, 3]] if bf16_optimizer else [[0, 1], [3, 2]])
        for g in range(2):
            read = _flat_group(sds, g, bf16_optimizer)
            assert all(torch.equal(read[key], flat[key][g]) for key in OPTIMIZER_KEYS)


def test_world_size_must_factor_into_the_layout():
    from megatron.parallel.layout import resolve_layout

    assert resolve_layout(8, 2, 2).dp == 2 and resolve_layout(3, 1, 0).dp == 3
    with pytest.raises(ValueError, match="6 ranks of this job do not factor into pipe_parallel_size 2 x model_parallel_size 2"):
        resolve_layout(6, 2, 2)


def test_model_and_zero_checks_name_the_setting():
    from megatron.parallel.layout import model_problems, zero_problems

    assert model_problems(2, 2, num_layers=4, num_heads=4, num_kv_heads=2, mlp_width=256, seq_length=64) == []
    problems = model_problems(4, 8, num_layers=4, num_heads=6, num_kv_heads=2, mlp_width=250, seq_length=63,
                              sequence_parallel=True)
    text = "\n".join(problems)
    for fragment in ("num_attention_heads 6 is not divisible by model_parallel_size 4", "num_kv_heads 2",
                     "MLP width 250", "seq_length 63", "pipe_parallel_size 8 is larger than num_layers 4"):
        assert fragment in text
    assert zero_problems(1, 2, 2) == [] and zero_problems(2, 2, 1) == [] and zero_problems(3, 1, 1) == []
    assert "supported combinations" in zero_problems(2, 1, 2)[0]
    assert "ZeRO stage 3 does not work with tensor parallelism" in zero_problems(3, 2, 1)[0]
    assert "ZeRO stage 0 does not work with pipeline parallelism" in zero_problems(0, 1, 2)[0]


def test_config_loader_rejects_layouts_that_cannot_work(tmp_path):
    from megatron.neox_arguments import NeoXArgs
    from megatron.neox_arguments.errors import ConfigError

    def load(**settings):
        path = tmp_path / "c.yml"
        path.write_text(yaml.safe_dump({"num_layers": 2, "hidden_size": 64, "num_attention_heads": 4,
                                        "seq_length": 32, **settings}))
        return NeoXArgs.from_files([path])

    assert load(model_parallel_size=2, pipe_parallel_size=2, zero_optimization={"stage": 1}).parallel.data_parallel_size(8) == 2
    with pytest.raises(ConfigError, match="num_attention_heads 4 is not divisible by model_parallel_size 8"):
        load(model_parallel_size=8)
    with pytest.raises(ConfigError, match="pipeline engine refuses ZeRO 2 and 3"):
        load(pipe_parallel_size=2, zero_optimization={"stage": 2})
    with pytest.raises(ConfigError, match="do not factor into pipe_parallel_size 1 x model_parallel_size 4"):
        load(model_parallel_size=4, global_num_gpus=6, train_micro_batch_size_per_gpu=1)


def test_every_parameter_has_one_split_rule_and_pipeline_names_round_trip():
    import torch

    from megatron.model import GPTModel
    from megatron.neox_arguments import NeoXArgs
    from megatron.parallel.pipeline import layer_of, model_name, pipe_name
    from megatron.parallel.tensor_parallel import shard, split_dim

    args = NeoXArgs.from_dict({**COMMON, **MODELS["sepllm"]})
    model = GPTModel(args.model, args.sepllm, 512, device="meta")
    split = {name: split_dim(name) for name, _ in model.named_parameters()}
    assert split["embedding.word_embeddings.weight"] == 0 and split["output_layer.weight"] == 0
    assert split["layers.0.attention.query_key_value.weight"] == 0 and split["layers.0.attention.dense.weight"] == 1
    assert split["layers.0.mlp.dense_h_to_4h_gate.weight"] == 0 and split["layers.3.mlp.dense_4h_to_h.weight"] == 1
    assert split["layers.0.input_layernorm.weight"] is None and split["final_norm.weight"] is None
    for name, _ in model.named_parameters():
        index = layer_of(name, 4)
        assert model_name(index, pipe_name(name, 4), 4) == name
    whole = torch.arange(24.0).view(4, 6)
    assert torch.equal(torch.cat([shard(whole, 1, r, 3) for r in range(3)], dim=1), whole)


def test_unreachable_master_fails_fast_with_a_clear_error():
    from megatron.parallel.distributed import free_port, wait_for_master

    port = free_port()  # nothing listens on it
    start = time.monotonic()
    with pytest.raises(RuntimeError, match=f"rank 3 cannot reach the master at 127.0.0.1:{port}"):
        wait_for_master("127.0.0.1", port, rank=3, timeout_s=1.0)
    assert time.monotonic() - start < 10
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        wait_for_master("127.0.0.1", server.getsockname()[1], rank=1, timeout_s=5.0)


def test_a_finished_process_ends_with_its_code_and_keeps_what_it_printed():
    """end_process skips interpreter finalization (os._exit), so buffered output must be flushed first;
    stdout is a pipe here, so print() buffers it."""
    script = (
        "import logging, sys\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "from megatron.parallel.distributed import end_process\n"
        "logging.basicConfig(stream=sys.stderr)\n"
        "print('trained', end='')\n"
        "logging.getLogger('x').warning('logged')\n"
        "import atexit; atexit.register(lambda: print('finalized'))\n"
        "end_process(3)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert proc.stdout == "trained" and "logged" in proc.stderr  # flushed, and no finalization ran

# ------------------------------------------------------------------------------ worker


def _worker(out: str, configs: list[str]) -> None:
    sys.path.insert(0, str(ROOT))
    from megatron.parallel.distributed import end_process, init_distributed, prepare_accelerator_env

    prepare_accelerator_env()
    from megatron.neox_arguments import NeoXArgs
    from megatron.training.trainer import Trainer

    env = None
    results = []
    for config in configs:
        args = NeoXArgs.from_files([config])
        env = env or init_distributed(args.parallel.distributed_backend, args.launcher)
        trainer = Trainer(args, env)
        start = trainer.state.iteration
        losses = trainer.train()
        results.append({"start": start, "losses": losses, "valid": trainer.evaluate(),
                        "compiled": trainer.parallel.compiled})
        del trainer
    if env.is_main:
        Path(out).write_text(json.dumps(results))
    end_process(0)


if __name__ == "__main__":
    _worker(sys.argv[1], sys.argv[2:])
