"""Move a checkpoint to another tensor x pipeline x data layout, offline, in one process.

A checkpoint is read whole (any layout; any ZeRO stage without model parallelism), merged into
GPTModel parameter names, and written again as the files DeepSpeed loads for the target layout:

    pipe 1:  mp_rank_{tp:02d}_model_states.pt               module = this tensor-parallel slice
    pipe >1: layer_{i:02d}-model_{tp:02d}-model_states.pt   one per pipeline layer (see pipeline.py)
             mp_rank_{stage * tp_size + tp:02d}_model_states.pt   steps, LR schedule, client state

Written: the weights, the learning-rate schedule, DeepSpeed's step counters and the client state
(our train_state: iteration and consumed samples, so the data continues where it stopped).
Not carried over: the optimizer's moments (DeepSpeed keeps them flattened per layout and cannot
repartition them even for a new data-parallel size) and per-rank RNG states. Load the result with
`no_load_optim: true`: under ZeRO the fp32 master weights are rebuilt from the loaded weights.
DeepSpeed restores the LR schedule and step counters too when asked to skip only the optimizer
(load_optimizer_states=False); a module-only load takes the weights and the client state alone.
"""
from __future__ import annotations

import io
import json
import os
import re
import shutil
from pathlib import Path
from typing import Optional

import torch

from megatron.parallel.layout import Layout, model_problems
from megatron.parallel.pipeline import layer_of, model_name, pipe_name
from megatron.parallel.tensor_parallel import shard, split_dim

_LAYER_FILE = re.compile(r"^layer_(\d+)-model_(\d+)-model_states\.pt$")
_MP_FILE = re.compile(r"^mp_rank_(\d+)_model_states\.pt$")
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
    return torch.load(path, map_location="cpu", weights_only=False)


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
                     *, num_layers: int, config_yaml: str, note: dict) -> Path:
    """Write `tag` under `save_dir` for `layout`, crash-safely: the folder appears complete or not at all."""
    from megatron.atomic_io import atomic_write_text, fsync_dir, fsync_tree

    save_dir.mkdir(parents=True, exist_ok=True)
    final = save_dir / tag
    if final.exists():
        raise ReshardError(f"{final} already exists; choose another output directory or remove it")
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
            (tmp / name).write_bytes(_torch_bytes({**common, "module": modules.pop(name, None)}))
    for name, module in modules.items():
        (tmp / name).write_bytes(_torch_bytes(module))
    (tmp / "config.yml").write_text(config_yaml)
    files = {p.name: p.stat().st_size for p in sorted(tmp.iterdir())}
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
    note = {"from": str(folder), "source_layout": {"tp": tp, "pp": pp}, "target_layout": vars(layout).copy()}
    written = write_checkpoint(model, state, Path(save_dir), folder.name, layout, num_layers=num_layers,
                               config_yaml=args.to_yaml(), note=note)
    return written, notices


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
