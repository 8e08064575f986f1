"""Resharding torch_autocast checkpoints carries the optimizer between one rank (ZeRO as stage 0: torch
AdamW's state_dict in the model states) and two data-parallel ranks (ZeRO-1 files over fp32 parameters).

One SepLLM model of tests/test_parallel.py, bf16 under torch.autocast, global batch 8 in both layouts
(micro 4 x 2 accumulation steps on one process, x 2 ranks on two). Three launches of that file's worker:
one process trains 5 steps and saves at step 3; resharded to DP=2, two processes resume it (with and
without its optimizer) besides training their own 5 steps with a save at 3, which, resharded to one
rank, one process resumes (with and without).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from test_parallel import STEPS, _assert_same_content, build_corpus, launch, write_config

SAVED_AT = 3
AUTOCAST = {"precision": "bfloat16", "torch_autocast": True}
# bf16 compute sums in another order on one process and two (and DP=2 all-reduces Linear weights'
# gradients in bf16): measured on CPU, the two layouts' losses stay within 4e-5 of each other over
# 5 steps; resuming without the optimizer state misses the second resumed step by far more.
TOLERANCE = 5e-4


def _layout_of(nproc: int) -> str:
    return "one" if nproc == 1 else "dp2"  # test_parallel.LAYOUTS: accumulation 2 on one process, 1 on two


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{"one", "dp2", "one_as_dp2", "one_as_dp2_no_optim", "dp2_as_one", "dp2_as_one_no_optim", "folder"}:
    each a worker result ({"start", "losses", "valid"}) but "folder"."""
    from megatron.parallel.layout import Layout
    from megatron.parallel.reshard import reshard

    folder = tmp_path_factory.mktemp("reshard_autocast")
    corpus = build_corpus(folder)
    results: dict = {"folder": folder}

    def train(nproc: int, runs_: dict[str, dict]) -> None:
        configs = [write_config(folder, name, corpus, "sepllm", _layout_of(nproc), **AUTOCAST, **extra)
                   for name, extra in runs_.items()]
        results.update(zip(runs_, launch(folder, nproc, configs)))

    def resharded(source: str, nproc: int) -> dict[str, dict]:
        target = folder / f"{source}_as_{_layout_of(nproc)}"
        reshard(folder / f"ck_{source}" / f"global_step{SAVED_AT}", target, Layout(tp=1, pp=1, dp=nproc))
        name = f"{source}_as_{_layout_of(nproc)}"
        return {name: {"load": str(target)}, f"{name}_no_optim": {"load": str(target), "no_load_optim": True}}

    saving = {"extra_save_iters": [SAVED_AT]}
    train(1, {"one": {"save": str(folder / "ck_one"), **saving}})
    train(2, {"dp2": {"save": str(folder / "ck_dp2"), **saving}, **resharded("one", 2)})
    train(1, resharded("dp2", 1))
    return results


def _checkpoint(runs, source: str) -> Path:
    return runs["folder"] / f"ck_{source}" / f"global_step{SAVED_AT}"


@pytest.mark.multiproc
def test_one_rank_and_two_train_alike(runs):
    """The oracle of the resumes below: the layouts differ by bf16 rounding only."""
    assert runs["dp2"]["losses"] == pytest.approx(runs["one"]["losses"], rel=0, abs=TOLERANCE)
    assert runs["one"]["losses"][-1] < runs["one"]["losses"][0] - 0.3


@pytest.mark.multiproc
@pytest.mark.parametrize("source,target", [("one", "dp2"), ("dp2", "one")], ids=["stage0-to-dp2", "dp2-to-stage0"])
def test_autocast_checkpoint_resumes_in_the_other_layout_with_its_optimizer(runs, source, target):
    """Saved at step 3, resharded, resumed to step 5: the losses of the source run continuing, which
    needs Adam's moments and step; without them (no_load_optim) the second resumed step is off."""
    continuing = runs[source]
    resumed, without = runs[f"{source}_as_{target}"], runs[f"{source}_as_{target}_no_optim"]
    assert resumed["start"] == SAVED_AT and len(resumed["losses"]) == STEPS - SAVED_AT
    assert resumed["losses"] == pytest.approx(continuing["losses"][SAVED_AT:], rel=0, abs=TOLERANCE)
    assert resumed["valid"] == pytest.approx(continuing["valid"], rel=0, abs=TOLERANCE)
    # The first resumed step evaluates the loaded weights; the second shows the update Adam made.
    assert without["losses"][0] == pytest.approx(resumed["losses"][0], rel=0, abs=TOLERANCE)
    assert abs(without["losses"][1] - continuing["losses"][-1]) > 20 * TOLERANCE, without["losses"]


@pytest.mark.multiproc
def test_stage0_and_zero_states_convert_into_each_other_exactly(runs, tmp_path):
    """Stage 0 -> DP=2 -> one rank gives back torch's state_dict as saved, and DeepSpeed's own ZeRO-1
    files of the DP=2 run come back identical by way of one rank (loss scaler, clipping, stage, config)."""
    from megatron.parallel.layout import Layout
    from megatron.parallel.reshard import reshard

    one, dp2 = _checkpoint(runs, "one"), _checkpoint(runs, "dp2")
    assert not list(one.glob("*optim_states.pt")) and len(list(dp2.glob("zero_pp_rank_*optim_states.pt"))) == 2
    hops = [(one, Layout(tp=1, pp=1, dp=2)), (tmp_path / "a", Layout(tp=1, pp=1, dp=1)),
            (dp2, Layout(tp=1, pp=1, dp=1)), (tmp_path / "c", Layout(tp=1, pp=1, dp=2))]
    outs = ["a", "b", "c", "d"]
    for (source, layout), out in zip(hops, outs):
        written, notices = reshard(source, tmp_path / out, layout)
        assert notices == [], notices
        assert bool(list(written.glob("*optim_states.pt"))) == (layout.dp == 2), out
        states = torch.load(written / "mp_rank_00_model_states.pt", weights_only=False)
        assert (states["optimizer"] is None) == (layout.dp == 2), out

    def optimizer(folder: Path) -> dict:
        return torch.load(folder / "mp_rank_00_model_states.pt", weights_only=False)["optimizer"]

    _assert_same_content(optimizer(tmp_path / "b" / f"global_step{SAVED_AT}"), optimizer(one), "stage 0 round trip")
    for rank in range(2):
        name = f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt"
        _assert_same_content(torch.load(tmp_path / "d" / f"global_step{SAVED_AT}" / name, weights_only=False),
                             torch.load(dp2 / name, weights_only=False), name)


@pytest.mark.multiproc
def test_stage0_state_that_does_not_fit_the_model_is_not_carried(runs, tmp_path):
    """The parameter order is checked, not assumed: a state whose indices or groups do not match the
    model is refused with the reason, and the tool says to resume without it."""
    import sys

    from megatron.checkpointing.export import checkpoint_args
    from megatron.model import GPTModel
    from megatron.parallel.layout import Layout
    from megatron.checkpointing.integrity import file_records
    from megatron.parallel.reshard import ReshardError, read_model, read_torch_optimizer, reshard, torch_param_groups

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
    from reshard_checkpoint import main as reshard_main

    def damaged(name: str, change) -> Path:
        folder = tmp_path / name / f"global_step{SAVED_AT}"
        shutil.copytree(_checkpoint(runs, "one"), folder)
        path = folder / "mp_rank_00_model_states.pt"
        states = torch.load(path, weights_only=False)
        change(states["optimizer"])
        torch.save(states, path)
        # a state that does not fit, written as if saved so (the manifest's checksum would refuse a changed file)
        manifest = json.loads((folder / "manifest.json").read_text())
        manifest["files"][path.name] = file_records(folder, [path.name])[path.name]
        (folder / "manifest.json").write_text(json.dumps(manifest))
        return folder

    def swap_first_two(sd):  # the embedding (512 x 64) and the first QKV matrix
        sd["state"][0], sd["state"][1] = sd["state"][1], sd["state"][0]

    def move_to_other_group(sd):
        sd["param_groups"][1]["params"].insert(0, sd["param_groups"][0]["params"].pop())

    cases = [(swap_first_two, "parameter 0 has shape .* but that index is embedding.word_embeddings.weight"),
             (move_to_other_group, r"parameter groups of \[21, 30\] parameters, the model's optimizer \[22, 29\]")]
    for change, message in cases:
        folder = damaged(change.__name__, change)
        args, model = checkpoint_args(folder, None), read_model(folder, 4)
        meta = GPTModel(args.model, args.sepllm, model["embedding.word_embeddings.weight"].shape[0], device="meta")
        with pytest.raises(ReshardError, match=message):
            read_torch_optimizer(folder, model, torch_param_groups(meta))
        written, notices = reshard(folder, tmp_path / f"{change.__name__}_out", Layout(tp=1, pp=1, dp=2))
        assert not list(written.glob("*optim_states.pt")) and any("no_load_optim: true" in n for n in notices)
    out = tmp_path / "tool_out"
    assert reshard_main([str(damaged("tool", swap_first_two)), str(out), "--data_parallel_size", "2"]) == 0
    assert reshard_main([str(_checkpoint(runs, "one")), str(tmp_path / "tp2"), "--model_parallel_size", "2"]) == 2
