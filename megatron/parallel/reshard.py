"""Move a checkpoint to another tensor x pipeline x data layout, offline, in one process.

A checkpoint is read whole (any layout; any ZeRO stage without model parallelism), merged into
GPTModel parameter names, and written again as the files DeepSpeed loads for the target layout:

    pipe 1:  mp_rank_{tp:02d}_model_states.pt               module = this tensor-parallel slice
    pipe >1: layer_{i:02d}-model_{tp:02d}-model_states.pt   one per pipeline layer (see pipeline.py)
             mp_rank_{stage * tp_size + tp:02d}_model_states.pt   steps, LR schedule, client state
    [bf16_]zero_pp_rank_{dp}_mp_rank_{mp:02d}_optim_states.pt   optimizer partition of a rank

Written: the weights, the learning-rate schedule, DeepSpeed's step counters and the client state
(our train_state: iteration and consumed samples, so the data continues where it stopped), and,
for ZeRO stage 1 and 2 checkpoints in fp32, fp16 or bf16 (DeepSpeedZeroOptimizer) and for bf16
ZeRO-1 checkpoints of DeepSpeed's BF16_Optimizer, the optimizer: fp32 master weights, Adam's
exp_avg and exp_avg_sq and its step count. DeepSpeed keeps those as one flat vector per parameter
group and rank; they are cut back into parameters by the `param_shapes` saved with the checkpoint,
merged over tensor-parallel ranks like the weights, and flattened and partitioned again exactly as
the source's optimizer lays them out for the target rank (parameter order of the target module,
alignment 2 x data-parallel size, equal partitions; DeepSpeedZeroOptimizer saves its fp32
partitions without the alignment padding and counts each rank's padding, BF16_Optimizer saves them
whole and counts the padding on the last rank). Such a checkpoint resumes with its optimizer state
(plain `load`).

Without ZeRO (stage 0, which torch_autocast runs on one data-parallel rank) DeepSpeed steps the
torch optimizer itself and saves its state_dict under "optimizer" in mp_rank_00_model_states.pt:
Adam's moments and step per parameter index, in the order of training.optimizer.param_groups (the
fp32 master weights are the parameters). That state is read into the same by-name form and written
either way: from stage 0 into ZeRO-1/2 partitions over fp32 parameters, and from those (or stage 0)
into a target that runs stage 0, so a torch_autocast run moves between one rank and several with
its optimizer (tensor and pipeline parallelism excepted: torch_autocast runs without them).

Not carried: per-rank RNG states; the optimizer of ZeRO-3 checkpoints, of stage-0 checkpoints with
tensor or pipeline parallelism or DeepSpeed's fp16/bf16 wrappers, and anything into a stage-0 target
over fp16/bf16 parameters (other formats): load those results with `no_load_optim: true`, which
keeps the LR schedule and step counters (the fp32 master weights are rebuilt from the loaded
weights; Adam's moments restart).
"""
from __future__ import annotations

import copy
import io
import json
import math
import os
import re
import shutil
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from megatron.checkpointing.integrity import file_records
from megatron.parallel.layout import Layout, model_problems
from megatron.parallel.pipeline import layer_of, model_name, pipe_name
from megatron.parallel.tensor_parallel import shard, split_dim

_LAYER_FILE = re.compile(r"^layer_(\d+)-model_(\d+)-model_states\.pt$")
_MP_FILE = re.compile(r"^mp_rank_(\d+)_model_states\.pt$")
_OPTIM_FILE = re.compile(r"^(bf16_)?zero_pp_rank_(\d+)_mp_rank_(\d+)_optim_states\.pt$")
_PIPE_PARAM = re.compile(r"^(\d+)\.(.+)$")
_TIED_PREFIX = "tied_modules.word_embeddings."
ZERO_ALIGNMENT = 2  # DeepSpeed's nccl_start_alignment_factor: flat groups align to 2 x data-parallel size
_EXTRA_STATE = "._extra_state"  # megatron-core layers' placeholder entries, None-valued
# DeepSpeed's keys in mp_rank files that describe the source layout or optimizer; rewritten or dropped.
_LAYOUT_KEYS = ("module", "optimizer", "param_shapes", "frozen_param_shapes", "shared_params",
                "frozen_param_fragments", "buffer_names", "dp_world_size", "mp_world_size",
                "checkpoint_parallel_dimensions", "ds_config")
MANIFEST = "manifest.json"
LATEST = "latest"


class ReshardError(ValueError):
    pass


def _load(path: Path) -> dict:
    from megatron.checkpointing.checkpoint import read_torch_file

    return read_torch_file(path)


def source_layout(folder: Path) -> tuple[int, int]:
    """(tensor, pipeline) sizes a checkpoint folder was saved with, read from its file names."""
    layer_tps = {int(m.group(2)) for p in folder.iterdir() if (m := _LAYER_FILE.match(p.name))}
    mp_ranks = {int(m.group(1)) for p in folder.iterdir() if (m := _MP_FILE.match(p.name))}
    if layer_tps:
        tp = max(layer_tps) + 1
        if not mp_ranks or len(mp_ranks) % tp:
            raise ReshardError(f"{folder} has pipeline layer files for {tp} tensor-parallel ranks but "
                               f"{len(mp_ranks)} mp_rank files; is the checkpoint complete?")
        return tp, len(mp_ranks) // tp
    return max(len(mp_ranks), 1), 1


def read_model(folder: Path, num_layers: int) -> dict[str, torch.Tensor]:
    """The whole model's state dict (GPTModel names) from a checkpoint of any layout."""
    tp, pp = source_layout(folder)
    if tp == 1 and pp == 1:
        from megatron.checkpointing.export import read_model_state_dict

        return read_model_state_dict(folder)
    slices: dict[str, list[Optional[torch.Tensor]]] = {}
    if pp == 1:
        for rank in range(tp):
            module = _load(folder / f"mp_rank_{rank:02d}_model_states.pt").get("module")
            if module is None:
                raise ReshardError(f"{folder}/mp_rank_{rank:02d}_model_states.pt holds no weights")
            for name, value in module.items():
                slices.setdefault(name, [None] * tp)[rank] = value
    else:
        for path in sorted(folder.iterdir()):
            m = _LAYER_FILE.match(path.name)
            if not m:
                continue
            index, rank = int(m.group(1)), int(m.group(2))
            for name, value in _load(path).items():
                full_name = model_name(index, name, num_layers)
                if index != layer_of(full_name, num_layers):
                    continue  # the tied embedding's copy on the last stage (saved by some versions)
                slices.setdefault(full_name, [None] * tp)[rank] = value
    model = {}
    for name, parts in slices.items():
        if name.endswith(_EXTRA_STATE):
            continue
        if any(p is None for p in parts):
            raise ReshardError(f"parameter {name} is missing on some tensor-parallel ranks of {folder}")
        dim = split_dim(name)
        model[name] = parts[0].clone() if dim is None else torch.cat(parts, dim=dim)
    return model


def read_training_state(folder: Path) -> dict:
    """What a resumed run needs besides weights: LR schedule, step counters, client state."""
    for name in ("mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_model_states.pt"):  # ZeRO-3: the latter
        if (folder / name).exists():
            return {k: v for k, v in _load(folder / name).items() if k not in _LAYOUT_KEYS}
    raise ReshardError(f"{folder} has no mp_rank_00_model_states.pt (steps and LR schedule); is the checkpoint complete?")


def target_vocab_divisor(padded_vocab: int, tp: int, divisible_by: int, vocab: Optional[int]) -> int:
    """make_vocab_size_divisible_by for the new layout that keeps the checkpoint's padded vocabulary.

    The padding rows take part in the softmax, so the row count must not change.
    """
    from megatron.model.dimensions import padded_vocab_size

    if padded_vocab % tp:
        raise ReshardError(
            f"the checkpoint's padded vocabulary ({padded_vocab} rows) does not split into {tp} tensor-parallel "
            "slices; choose a model_parallel_size that divides it"
        )
    if vocab is not None and padded_vocab_size(vocab, divisible_by, tp) == padded_vocab:
        return divisible_by
    return padded_vocab // tp


# ------------------------------------------------------- optimizer state (ZeRO stage 1 and 2, BF16_Optimizer)

OPTIMIZER_KEYS = ("fp32", "exp_avg", "exp_avg_sq")  # fp32: the master weights


@dataclass
class OptimizerState:
    """Adam's state of the whole model by GPTModel parameter name, and what every rank shares."""

    tensors: dict[str, dict[str, torch.Tensor]]  # OPTIMIZER_KEYS -> parameter name -> whole tensor
    step: Optional[torch.Tensor]  # Adam's step count (the same for every flat group)
    param_groups: list[dict]  # torch optimizer hyperparameters of the (decay, no-decay) groups
    common: dict  # loss scaler, clip_grad, zero_stage, ds_version: copied to every rank
    extra: dict  # the file's other keys (ds_config, ds_version)
    bf16_optimizer: bool = False  # DeepSpeed's BF16_Optimizer layout rather than DeepSpeedZeroOptimizer's
    file_prefix: str = ""  # "bf16_" for any bf16 run: DeepSpeed looks for that name first when loading


def _group_state(sd: dict, group: int) -> dict:
    base = sd["base_optimizer_state"]
    return base["state"][base["param_groups"][group]["params"][0]]


def _gpt_name(name: str, pipelined: bool, num_layers: int) -> str:
    """The GPTModel name of a parameter as a (pipeline) module names it in `param_shapes`."""
    if not pipelined:
        return name
    if name.startswith(_TIED_PREFIX):
        return name[len(_TIED_PREFIX):]
    m = _PIPE_PARAM.match(name)
    if not m:
        raise ReshardError(f"pipeline parameter name {name!r} has no layer index")
    return model_name(int(m.group(1)), m.group(2), num_layers)


def read_optimizer(folder: Path, num_layers: int) -> Optional[OptimizerState]:
    """The ZeRO-1/2 or BF16_Optimizer state of a checkpoint of any layout, merged; None when it has no
    optimizer files.

    Raises ReshardError for optimizer files of another format (ZeRO-3, elastic checkpoints).
    """
    files, prefixes = {}, set()
    for path in folder.iterdir():
        if m := _OPTIM_FILE.match(path.name):
            files[(int(m.group(3)), int(m.group(2)))] = path  # (mp rank, dp rank)
            prefixes.add(m.group(1) or "")
    if not files:
        return None
    if len(prefixes) > 1:
        raise ReshardError(f"{folder} holds both bf16_zero_pp_rank_* and zero_pp_rank_* optimizer files; remove "
                           "the ones of the other run so that one optimizer state remains")
    tp, pp = source_layout(folder)
    dp = 1 + max(d for _, d in files)
    missing = [f"mp {mp} dp {d}" for mp in range(tp * pp) for d in range(dp) if (mp, d) not in files]
    if missing:
        raise ReshardError(f"{folder} lacks the ZeRO optimizer files of ranks {', '.join(missing)}; is the checkpoint complete?")
    slices: dict[str, dict[str, list[Optional[torch.Tensor]]]] = {key: {} for key in OPTIMIZER_KEYS}
    first, bf16_optimizer = None, False
    for mp in range(tp * pp):
        tp_rank = mp % tp
        loaded = [_load(files[(mp, d)]) for d in range(dp)]
        sds = [f["optimizer_state_dict"] for f in loaded]
        if first is None:
            first = loaded[0]
        bf16_optimizer = _check_zero_format(files[(mp, 0)].name, sds[0])
        shapes = _load(folder / f"mp_rank_{mp:02d}_model_states.pt").get("param_shapes")
        if not shapes:
            raise ReshardError(f"{folder}/mp_rank_{mp:02d}_model_states.pt has no param_shapes; the optimizer "
                               "state cannot be cut into parameters: resume with no_load_optim: true")
        for g, group_shapes in enumerate(shapes):
            flats = _flat_group(sds, g, bf16_optimizer)
            paddings = sds[0].get("param_alignment_paddings", [[0] * len(group_shapes)] * len(shapes))[g]
            offset = 0
            for (name, shape), padding in zip(group_shapes.items(), paddings):
                numel = math.prod(shape)
                full_name = _gpt_name(name, pp > 1, num_layers)
                for key, flat in flats.items():
                    parts = slices[key].setdefault(full_name, [None] * tp)
                    if parts[tp_rank] is None:  # the last stage's copy of a tied embedding is the same
                        parts[tp_rank] = flat[offset : offset + numel].view(shape).clone()
                offset += numel + padding
            if offset != flats["fp32"].numel():
                raise ReshardError(f"{files[(mp, 0)].name}: group {g} holds {flats['fp32'].numel()} values but its "
                                   f"param_shapes describe {offset}")
    sd0 = first["optimizer_state_dict"]
    tensors = {key: {name: _merge(name, parts, folder) for name, parts in by_name.items()}
               for key, by_name in slices.items()}
    common = {k: sd0[k] for k in ("loss_scaler", "dynamic_loss_scale", "overflow", "clip_grad", "zero_stage", "ds_version")
              if k in sd0}
    return OptimizerState(tensors, _group_state(sd0, 0).get("step"), copy.deepcopy(sd0["base_optimizer_state"]["param_groups"]),
                          common, {k: v for k, v in first.items() if k != "optimizer_state_dict"},
                          bf16_optimizer=bf16_optimizer, file_prefix=prefixes.pop())


def _flat_group(sds: list[dict], g: int, bf16_optimizer: bool) -> dict[str, torch.Tensor]:
    """Group g's flat master weights and moments over all data-parallel ranks, without the alignment padding."""
    partitions = [sd["single_partition_of_fp32_groups"][g] for sd in sds]
    if bf16_optimizer:
        # Every partition is saved whole; the padding sits at the end and is counted on the last rank.
        real = sum(p.numel() for p in partitions) - int(sds[-1]["group_paddings"][g])
        flats = {"fp32": torch.cat([p.detach().reshape(-1) for p in partitions])[:real]}
        for key in OPTIMIZER_KEYS[1:]:
            flats[key] = torch.cat([_group_state(sd, g)[key].reshape(-1) for sd in sds])[:real]
        return flats
    flats = {"fp32": torch.cat(partitions)}
    for key in OPTIMIZER_KEYS[1:]:
        # Only the last rank is padded; the fp32 partitions are saved without the padding.
        flats[key] = torch.cat([_group_state(sd, g)[key].reshape(-1)[: part.numel()]
                                for sd, part in zip(sds, partitions)])
    return flats


def _check_zero_format(file_name: str, sd: dict) -> bool:
    """True for DeepSpeed's BF16_Optimizer, False for DeepSpeedZeroOptimizer (ZeRO stage 1 and 2, not elastic);
    other formats are not re-partitioned."""
    if "zero_stage" not in sd:
        if (file_name.startswith("bf16_") and isinstance(sd.get("base_optimizer_state"), dict)
                and {"single_partition_of_fp32_groups", "group_paddings", "partition_count"} <= sd.keys()):
            return True
        what = "an unknown optimizer"
    elif int(sd["zero_stage"]) not in (1, 2):
        what = f"ZeRO stage {int(sd['zero_stage'])}"
    elif not isinstance(sd.get("base_optimizer_state"), dict):
        what = "an elastic ZeRO checkpoint"
    else:
        return False
    raise ReshardError(f"{file_name} holds the optimizer state of {what}, which resharding does not carry over "
                       "(supported: ZeRO stage 1 and 2 in fp32, fp16 or bf16, and DeepSpeed's BF16_Optimizer): "
                       "resume the resharded checkpoint with no_load_optim: true")


def _merge(name: str, parts: list[Optional[torch.Tensor]], folder: Path) -> torch.Tensor:
    if any(p is None for p in parts):
        raise ReshardError(f"the optimizer state of {name} is missing on some tensor-parallel ranks of {folder}")
    dim = split_dim(name)
    return parts[0] if dim is None else torch.cat(parts, dim=dim)


# ------------------------------------------------------ optimizer state without ZeRO (stage 0): torch's own

def torch_param_groups(model: torch.nn.Module) -> list[list[str]]:
    """Parameter names of each group of the torch optimizer the trainer builds for `model` (a GPTModel,
    on the meta device will do), in the order its state_dict numbers them."""
    from megatron.training.optimizer import param_groups

    names = {id(p): n for n, p in model.named_parameters()}
    return [[names[id(p)] for p in group["params"]] for group in param_groups(model, 0.0)]


def read_torch_optimizer(folder: Path, model: dict[str, torch.Tensor], groups: list[list[str]]) -> Optional[OptimizerState]:
    """The torch optimizer state a stage-0 checkpoint (one model-parallel rank) keeps in its model states,
    by parameter name; None when it holds none. `groups`: torch_param_groups of the checkpoint's model.

    Raises ReshardError for a state that is not torch Adam's or does not fit the model."""
    path = folder / "mp_rank_00_model_states.pt"
    sd = _load(path).get("optimizer") if path.exists() else None
    if sd is None:
        return None
    what = f"{path}: the optimizer state saved without ZeRO"
    resume = "; resume the resharded checkpoint with no_load_optim: true"
    if source_layout(folder) != (1, 1):
        raise ReshardError(f"{what} is one of several tensor or pipeline-parallel slices, which resharding does "
                           "not carry over (supported without ZeRO: one model-parallel rank, as torch_autocast runs)" + resume)
    if not (isinstance(sd, dict) and sd.keys() == {"state", "param_groups"}):
        raise ReshardError(f"{what} is not a torch optimizer's state_dict (DeepSpeed's fp16/bf16 optimizer wrappers "
                           "are not carried over)" + resume)
    counts = [len(g["params"]) for g in sd["param_groups"]]
    if counts != [len(g) for g in groups]:
        raise ReshardError(f"{what} has parameter groups of {counts} parameters, the model's optimizer "
                           f"{[len(g) for g in groups]} (training.optimizer.param_groups): it belongs to another model "
                           "or optimizer" + resume)
    if not sd["state"]:
        raise ReshardError(f"{what} is empty (saved before the first step)" + resume)
    tensors: dict[str, dict[str, torch.Tensor]] = {key: {} for key in OPTIMIZER_KEYS}
    steps = set()
    for group, names in zip(sd["param_groups"], groups):
        for index, name in zip(group["params"], names):
            state = sd["state"].get(index)
            if state is None or not {"step", "exp_avg", "exp_avg_sq"} <= state.keys():
                raise ReshardError(f"{what} has no Adam state for parameter {index} ({name})" + resume)
            if "max_exp_avg_sq" in state:
                raise ReshardError(f"{what} is AMSGrad's, which ZeRO's files have no place for" + resume)
            weight = model[name]
            for key in OPTIMIZER_KEYS[1:]:
                if state[key].shape != weight.shape:
                    raise ReshardError(f"{what}: {key} of parameter {index} has shape {tuple(state[key].shape)}, but "
                                       f"that index is {name} of shape {tuple(weight.shape)} in the model: the parameter "
                                       "order is not training.optimizer.param_groups'" + resume)
                tensors[key][name] = state[key].float()
            if weight.dtype != torch.float32:
                raise ReshardError(f"{what} steps {weight.dtype} parameters; only fp32 ones (fp32, torch_autocast) "
                                   "are their own master weights" + resume)
            tensors["fp32"][name] = weight
            steps.add(float(state["step"]))
    if len(steps) != 1:
        raise ReshardError(f"{what} has parameters at different Adam steps {sorted(steps)}; ZeRO keeps one per group" + resume)
    step = sd["state"][sd["param_groups"][0]["params"][0]]["step"]
    param_groups = [{**{k: v for k, v in g.items() if k != "params"}, "params": [i]} for i, g in enumerate(sd["param_groups"])]
    return OptimizerState(tensors, step.clone() if torch.is_tensor(step) else step, param_groups, common={}, extra={})


def torch_optimizer_state(optim: OptimizerState, groups: list[list[str]]) -> dict:
    """The torch optimizer state_dict a stage-0 run over the whole model loads (`groups`: torch_param_groups)."""
    if len(groups) != len(optim.param_groups):
        raise ReshardError(f"the model's optimizer has {len(groups)} parameter groups, the checkpoint's "
                           f"{len(optim.param_groups)}; cannot map its optimizer state")
    state, param_groups, index = {}, [], 0
    for names, hyper in zip(groups, optim.param_groups):
        first = index
        for name in names:
            if name not in optim.tensors["exp_avg"]:
                raise ReshardError(f"the checkpoint's optimizer state lacks {name}")
            step = optim.step.clone() if torch.is_tensor(optim.step) else optim.step
            state[index] = {"step": step, "exp_avg": optim.tensors["exp_avg"][name].clone(),
                            "exp_avg_sq": optim.tensors["exp_avg_sq"][name].clone()}
            index += 1
        param_groups.append({**{k: v for k, v in hyper.items() if k != "params"}, "params": list(range(first, index))})
    return {"state": state, "param_groups": param_groups}


def zero_common(ds_config: dict) -> tuple[dict, dict]:
    """What DeepSpeedZeroOptimizer writes besides the partitions, over fp32 parameters, for a run with
    `ds_config`: the (common, extra) of an OptimizerState read from a stage-0 checkpoint."""
    import deepspeed
    from deepspeed.runtime.fp16.loss_scaler import CreateLossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum

    scaler = CreateLossScaler(dtype=torch.float32, static_loss_scale=1.0, dynamic_scaling=False, dynamic_loss_args=None)
    common = {"loss_scaler": scaler, "dynamic_loss_scale": False, "overflow": False,
              # ZeRO takes its clipping from the checkpoint when loading, so it must be the run's.
              "clip_grad": float(ds_config.get("gradient_clipping") or 0.0),
              "zero_stage": ZeroStageEnum(int(ds_config["zero_optimization"]["stage"])),
              "ds_version": deepspeed.__version__}
    return common, {"ds_config": ds_config, "ds_version": deepspeed.__version__}


def pipeline_parts(num_layers: int, stages: int, method: str, layer_numels: list[int], tied: bool) -> list[int]:
    """First pipeline layer of each stage (and the end), as DeepSpeed's PipelineModule partitions them.

    Layer classes and parameter counts are those of pipeline.layer_specs: embedding, blocks, final
    norm, output (the embedding again when tied).
    """
    from deepspeed.runtime import utils as ds_utils

    method = method.lower()
    if method == "uniform":
        return ds_utils.partition_uniform(num_items=num_layers + 3, num_parts=stages)
    if method == "parameters":
        return ds_utils.partition_balanced(weights=layer_numels, num_parts=stages)
    if method.startswith("type:"):
        classes = ["EmbeddingPipe", *["TransformerBlockPipe"] * num_layers, "FinalNormPipe",
                   "EmbeddingPipe" if tied else "OutputPipe"]
        pattern = re.compile(method.split(":", 1)[1], re.IGNORECASE)
        return ds_utils.partition_balanced(weights=[1 if pattern.search(c) else 0 for c in classes], num_parts=stages)
    raise ReshardError(f"pipe_partition_method {method!r} is not one resharding knows; use type:REGEX, parameters or uniform")


def stage_parameters(model: dict[str, torch.Tensor], order: list[str], layout: Layout, num_layers: int,
                     partition_method: str) -> list[list[tuple[str, str]]]:
    """Per pipeline stage: (name in that stage's module, GPTModel name) of every parameter, in module order.

    A PipelineModule lists its tied modules first (the whole embedding, on the first and last stage),
    then its own layers by index; a single stage is the GPTModel itself.
    """
    if layout.pp == 1:
        return [[(name, name) for name in order]]
    tied = "output_layer.weight" not in model
    numels = [0] * (num_layers + 3)
    for name in order:
        numels[layer_of(name, num_layers)] += model[name].numel() // (layout.tp if split_dim(name) is not None else 1)
    if tied:
        numels[num_layers + 2] = numels[0]
    parts = pipeline_parts(num_layers, layout.pp, partition_method, numels, tied)
    stages = []
    for stage in range(layout.pp):
        layers = range(parts[stage], parts[stage + 1])
        names = []
        if tied and (0 in layers or num_layers + 2 in layers):
            names += [(_TIED_PREFIX + n, n) for n in order if layer_of(n, num_layers) == 0]
        for index in layers:
            if tied and index == 0:
                continue
            names += [(f"{index}.{pipe_name(n, num_layers)}", n) for n in order if layer_of(n, num_layers) == index]
        stages.append(names)
    return stages


def _optimizer_groups(names: list[tuple[str, str]], model: dict[str, torch.Tensor]) -> list[list[tuple[str, str]]]:
    """training.optimizer.param_groups' split: matrices with weight decay, then biases and 1-d tensors."""
    decay = [(n, g) for n, g in names if model[g].ndim >= 2 and not n.endswith(".bias")]
    no_decay = [(n, g) for n, g in names if not (model[g].ndim >= 2 and not n.endswith(".bias"))]
    return [decay, no_decay] if no_decay else [decay]


def optimizer_files(model: dict[str, torch.Tensor], optim: OptimizerState, layout: Layout, num_layers: int,
                    partition_method: str, order: list[str]) -> tuple[dict[str, dict], dict[str, list]]:
    """The optimizer files of `layout` ({file name: content}) and each mp_rank file's param_shapes.

    Each group is flattened in module order, padded to a multiple of 2 x dp and cut into dp equal
    partitions (DeepSpeed's layout without parameter_alignment). Adam's state holds the padded
    partition. DeepSpeedZeroOptimizer saves the fp32 partition without its padding and each rank's
    padding; BF16_Optimizer saves it whole and the group's padding on the last rank only.
    """
    files, shapes = {}, {}
    missing = [n for n in order if n not in optim.tensors["fp32"]]
    if missing:
        raise ReshardError(f"the checkpoint's optimizer state lacks {', '.join(missing[:3])}")
    for stage, names in enumerate(stage_parameters(model, order, layout, num_layers, partition_method)):
        groups = _optimizer_groups(names, model)
        if len(groups) != len(optim.param_groups):
            raise ReshardError(f"stage {stage} of {layout} has {len(groups)} optimizer groups, the checkpoint "
                               f"{len(optim.param_groups)}; cannot map its optimizer state")
        for tp_rank in range(layout.tp):
            mp = stage * layout.tp + tp_rank
            flat = {key: [] for key in OPTIMIZER_KEYS}
            group_shapes = []
            for group in groups:
                for key in OPTIMIZER_KEYS:
                    pieces = [shard(optim.tensors[key][g], split_dim(g), tp_rank, layout.tp).reshape(-1) for _, g in group]
                    flat[key].append(torch.cat(pieces) if pieces else torch.zeros(0))
                group_shapes.append(OrderedDict(
                    (n, shard(model[g], split_dim(g), tp_rank, layout.tp).shape) for n, g in group))
            shapes[f"mp_rank_{mp:02d}_model_states.pt"] = group_shapes
            for d in range(layout.dp):
                sd = _rank_optimizer_state(optim, flat, group_shapes, d, layout.dp)
                name = f"{optim.file_prefix}zero_pp_rank_{d}_mp_rank_{mp:02d}_optim_states.pt"
                files[name] = {**optim.extra, "optimizer_state_dict": sd}
    return files, shapes


def _rank_optimizer_state(optim: OptimizerState, flat: dict[str, list[torch.Tensor]], group_shapes: list[OrderedDict],
                          d: int, dp: int) -> dict:
    """The optimizer_state_dict of data-parallel rank d: what DeepSpeed's optimizer state_dict() returns there."""
    state, fp32, paddings, mappings = {}, [], [], []
    for i, shapes in enumerate(group_shapes):
        numel = flat["fp32"][i].numel()
        aligned = math.ceil(numel / (ZERO_ALIGNMENT * dp)) * ZERO_ALIGNMENT * dp
        size = aligned // dp
        lean = max(0, min(size, numel - d * size))  # this partition's values before the padding

        def partition(values: torch.Tensor) -> torch.Tensor:
            part = torch.zeros(size, dtype=values.dtype)
            part[:lean] = values[d * size : d * size + lean]
            return part

        state[i] = {"step": optim.step.clone() if torch.is_tensor(optim.step) else optim.step,
                    "exp_avg": partition(flat["exp_avg"][i]), "exp_avg_sq": partition(flat["exp_avg_sq"][i])}
        if optim.bf16_optimizer:
            fp32.append(partition(flat["fp32"][i]))
            paddings.append(aligned - numel if d == dp - 1 else 0)
        else:
            fp32.append(partition(flat["fp32"][i])[:lean].clone())
            paddings.append(size - lean)
        mappings.append(_slice_mappings(shapes, d * size, size))
    base = {"state": state, "param_groups": copy.deepcopy(optim.param_groups)}
    sd = {**optim.common, "base_optimizer_state": base, "single_partition_of_fp32_groups": fp32,
          "group_paddings": paddings}
    if not optim.bf16_optimizer:  # DeepSpeed's key order, so same-layout files come out byte for byte
        sd["param_alignment_paddings"] = [[0] * len(s) for s in group_shapes]
    sd["partition_count"] = [dp] * len(group_shapes)
    sd["param_slice_mappings"] = mappings
    return sd


def _slice_mappings(shapes: OrderedDict, start: int, size: int) -> OrderedDict:
    """Where each parameter overlapping the partition [start, start + size) lies in it, as DeepSpeed records it
    (param_slice_mappings, read by its universal-checkpoint conversion)."""
    from deepspeed.utils.tensor_fragment import fragment_address

    mappings, offset = OrderedDict(), 0
    for name, shape in shapes.items():
        end = offset + math.prod(shape)
        first, last = max(offset, start), min(end, start + size)
        if first < last:
            mappings[name] = fragment_address(numel=last - first, start=first - start)
        offset = end
    return mappings


def _torch_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _module_files(model: dict[str, torch.Tensor], layout: Layout, num_layers: int) -> dict[str, dict]:
    """File name -> state dict of the module part of each file."""
    files: dict[str, dict] = {}
    for rank in range(layout.tp):
        for name, value in model.items():
            piece = shard(value, split_dim(name), rank, layout.tp).clone()
            if layout.pp == 1:
                files.setdefault(f"mp_rank_{rank:02d}_model_states.pt", {})[name] = piece
            else:
                index = layer_of(name, num_layers)
                files.setdefault(f"layer_{index:02d}-model_{rank:02d}-model_states.pt", {})[pipe_name(name, num_layers)] = piece
    return files


def write_checkpoint(model: dict[str, torch.Tensor], state: dict, save_dir: Path, tag: str, layout: Layout,
                     *, num_layers: int, config_yaml: str, note: dict, optimizer: Optional[dict[str, dict]] = None,
                     param_shapes: Optional[dict[str, list]] = None, torch_optimizer: Optional[dict] = None) -> Path:
    """Write `tag` under `save_dir` for `layout`, crash-safely: the folder appears complete or not at all.

    `optimizer`: ZeRO optimizer files by name; `torch_optimizer`: the state_dict a stage-0 run loads
    from mp_rank_00_model_states.pt (one model-parallel rank).
    """
    if torch_optimizer is not None and layout.tp * layout.pp != 1:
        raise ReshardError(f"a torch optimizer state_dict belongs to one model-parallel rank, not to layout {layout}")
    from megatron.atomic_io import atomic_write_text, fsync_dir, fsync_tree

    if save_dir.exists() and not save_dir.is_dir():
        raise ReshardError(f"output {save_dir} is a file; choose a directory")
    save_dir.mkdir(parents=True, exist_ok=True)
    final = save_dir / tag
    if final.exists():
        raise ReshardError(f"{final} already exists; choose another output directory or remove it")
    from megatron.checkpointing.checkpoint import iteration_of, resolve_tag

    newer = resolve_tag(str(save_dir))
    if newer is not None and (iteration_of(newer) or 0) > (iteration_of(tag) or 0):
        raise ReshardError(f"{save_dir / LATEST} names {newer}, later than {tag}: writing {tag} there would send resumed "
                           "runs back in time; choose another output directory")
    tmp = save_dir / f".{tag}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    common = {
        **state, "module": None, "optimizer": None, "param_shapes": None, "buffer_names": [], "shared_params": {},
        "dp_world_size": layout.dp, "mp_world_size": layout.tp * layout.pp,
        "checkpoint_parallel_dimensions": {"pp_degree": layout.pp, "tp_degree": layout.tp},
    }
    modules = _module_files(model, layout, num_layers)
    for stage in range(layout.pp):
        for rank in range(layout.tp):
            name = f"mp_rank_{stage * layout.tp + rank:02d}_model_states.pt"
            (tmp / name).write_bytes(_torch_bytes({**common, "module": modules.pop(name, None),
                                                   "param_shapes": (param_shapes or {}).get(name),
                                                   "optimizer": torch_optimizer}))
    for name, content in [*modules.items(), *(optimizer or {}).items()]:
        (tmp / name).write_bytes(_torch_bytes(content))
    (tmp / "config.yml").write_text(config_yaml)
    files = file_records(tmp, [p.name for p in sorted(tmp.iterdir())])
    # No per-rank RNG files: world_size null tells the loader not to expect them.
    manifest = {"iteration": state.get("global_steps"), "world_size": None, "files": files, "resharded": note}
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
    fsync_tree(tmp)
    os.replace(tmp, final)
    fsync_dir(save_dir)
    atomic_write_text(save_dir / LATEST, tag)
    return final


def reshard(source: Path, save_dir: Path, layout: Layout, *, config_files=None) -> tuple[Path, list[str]]:
    """Write `source` (a checkpoint folder) under `save_dir` for `layout`. Returns the new folder and notices."""
    from megatron.checkpointing.export import checkpoint_args, checkpoint_folder

    folder = checkpoint_folder(source)
    args = checkpoint_args(folder, config_files)
    m = args.model
    num_layers = int(m.num_layers)
    model = read_model(folder, num_layers)
    padded_vocab = int(model["embedding.word_embeddings.weight"].shape[0])
    mlp = model["layers.0.mlp.dense_4h_to_h.weight"].shape[1]
    problems = model_problems(layout.tp, layout.pp, num_layers=num_layers, num_heads=m.num_attention_heads,
                              num_kv_heads=m.num_kv_heads, mlp_width=mlp, seq_length=m.seq_length,
                              sequence_parallel=args.parallel.sequence_parallel)
    if problems:
        raise ReshardError(f"the model cannot use layout {layout}:\n  - " + "\n  - ".join(problems))
    notices = []
    source_settings = args.to_dict()
    divisor = target_vocab_divisor(padded_vocab, layout.tp, int(m.make_vocab_size_divisible_by), _vocab_size(args))
    if divisor != m.make_vocab_size_divisible_by:
        notices.append(
            f"make_vocab_size_divisible_by {m.make_vocab_size_divisible_by} x model_parallel_size {layout.tp} would pad "
            f"the vocabulary differently; train the new layout with make_vocab_size_divisible_by: {divisor} "
            f"to keep the checkpoint's {padded_vocab} rows"
        )
        m.make_vocab_size_divisible_by = divisor
    _retarget_config(args, layout, notices)
    state = read_training_state(folder)
    tp, pp = source_layout(folder)
    target = _target_deepspeed_config(args, layout, notices)
    from megatron.model import GPTModel

    meta = GPTModel(m, args.sepllm, padded_vocab, device="meta")  # the order DeepSpeed flattens parameters in
    order = [name for name, _ in meta.named_parameters()]
    groups = torch_param_groups(meta)
    optim_files = shapes = torch_state = None
    stage0_source = False  # torch's state_dict over fp32 parameters rather than ZeRO files
    try:
        optim = read_optimizer(folder, num_layers)
        if optim is None:
            optim = read_torch_optimizer(folder, model, groups)
            stage0_source = optim is not None
            if optim is None:
                notices.append(f"{folder} holds no optimizer state (neither ZeRO files nor a torch optimizer's "
                               "state_dict); resume with no_load_optim: true")
            elif target is not None:
                optim.common, optim.extra = zero_common(target)
    except ReshardError as exc:
        optim = None
        notices.append(str(exc))
    if optim is not None:
        stage = int((target or {}).get("zero_optimization", {}).get("stage", args.optimizer.zero_stage))
        low_precision = any(((target or {}).get(k) or {}).get("enabled") for k in ("fp16", "bf16"))
        fp32_params = not low_precision and not optim.file_prefix
        # ZeRO files from a stage-0 state need the target's ZeRO settings (zero_common), and fp32 parameters
        # as their master weights.
        if stage in (1, 2) and (not stage0_source or (target is not None and fp32_params)):
            optim_files, shapes = optimizer_files(model, optim, layout, num_layers, args.parallel.pipe_partition_method, order)
        elif stage == 0 and layout.tp * layout.pp == 1 and fp32_params and target is not None:
            torch_state = torch_optimizer_state(optim, groups)  # DeepSpeed steps the torch optimizer itself
        else:
            optim = None
            notices.append(f"the resumed run (layout {layout}, ZeRO stage {stage}"
                           f"{', fp16/bf16 parameters' if low_precision else ''}) keeps its optimizer state in a format "
                           "resharding does not write from this checkpoint's: resume with no_load_optim: true")
    note = {"from": str(folder), "source_layout": {"tp": tp, "pp": pp}, "target_layout": vars(layout).copy(),
            "optimizer": optim is not None, "resume_settings": resume_settings(source_settings, args, optim is not None)}
    written = write_checkpoint(model, state, Path(save_dir), folder.name, layout, num_layers=num_layers,
                               config_yaml=args.to_yaml(), note=note, optimizer=optim_files, param_shapes=shapes,
                               torch_optimizer=torch_state)
    return written, notices


def resume_settings(source_settings: dict, args, optimizer_carried: bool) -> dict:
    """The config keys the resumed run must change from the source run's (besides `load` and the rank count).

    The same values are in the written config.yml; without them the new layout would, e.g., pad the
    vocabulary to another row count than the checkpoint's and fail to load it.
    """
    changed = {k: v for k, v in args.to_dict().items() if v != source_settings.get(k) and k != "global_num_gpus"}
    if not optimizer_carried:
        changed["no_load_optim"] = True
    return changed


def _target_deepspeed_config(args, layout: Layout, notices: list[str]) -> Optional[dict]:
    """The DeepSpeed config the stored config.yml runs with on `layout` (its ZeRO stage decides the optimizer
    files: torch_autocast runs stage 0 on one data-parallel rank); None, with a notice, where it does not run."""
    from megatron.neox_arguments.errors import ConfigError
    from megatron.parallel.parallelize import Parallel

    try:
        return Parallel(layout, None, None).deepspeed_config(args.deepspeed_config(layout.dp))
    except ConfigError as exc:
        if args.precision.torch_autocast and layout.tp * layout.pp > 1:
            raise ReshardError(
                f"the checkpoint trained with torch_autocast, which runs without tensor or pipeline parallelism, and "
                f"layout {layout} has them: reshard with --config_file naming the run's YAML with torch_autocast: false "
                "(DeepSpeed's bf16 parameters), or keep model_parallel_size and pipe_parallel_size 1") from exc
        notices.append(f"the stored config does not run with layout {layout} as it is ({exc}); change it before resuming")
        return None


def _retarget_config(args, layout: Layout, notices: list[str]) -> None:
    """The stored config.yml as the new layout would run it."""
    from megatron.parallel.layout import zero_problems

    p = args.parallel
    p.model_parallel_size = layout.tp
    p.pipe_parallel_size = layout.pp if layout.pp > 1 else min(p.pipe_parallel_size, 1)
    p.global_num_gpus = layout.world
    zero = args.optimizer.zero_optimization
    if zero_problems(int(zero.get("stage", 0)), layout.tp, layout.pp):
        stage = 1 if layout.pp > 1 else 2
        notices.append(f"ZeRO stage {zero.get('stage')} does not work with layout {layout}; the stored config "
                       f"says stage {stage}, set zero_optimization.stage accordingly when resuming")
        zero["stage"] = stage


def _vocab_size(args) -> Optional[int]:
    """The tokenizer's vocabulary size, when its files are at hand."""
    try:
        from megatron.data.tokenizers import build_tokenizer

        t = args.tokenizer
        return build_tokenizer(t.tokenizer_type, t.vocab_file, t.merge_file).vocab_size
    except Exception:  # noqa: BLE001 - without the tokenizer files, keep the checkpoint's row count instead
        return None
