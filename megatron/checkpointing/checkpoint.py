"""Save and resume training state: GPT-NeoX layout, DeepSpeed formats, crash-safe `latest`.

Layout of `save/`:
    latest                      text: the tag of the newest complete checkpoint
    global_stepN/
        mp_rank_00_model_states.pt, *optim_states.pt   DeepSpeed's files (any ZeRO stage)
        rng_state_rank{r}.pt    python/numpy/torch RNG states of every rank
        config.yml              the resolved config of the run
        manifest.json           written last: every file of the checkpoint with its size and CRC32

`latest` moves only after every rank's files are written and fsynced and the manifest is in
place, so a process killed during a save leaves the previous checkpoint as `latest`. Loading
checks the manifest first and refuses a checkpoint with a missing, truncated or altered file.
"""
from __future__ import annotations

import json
import pickle
import random
import re
import shutil
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import yaml

from megatron.atomic_io import atomic_write_bytes, atomic_write_text, fsync_dir, fsync_tree
from megatron.checkpointing.integrity import checksum_problem, expected_size, file_records
from megatron.parallel.distributed import all_gather_objects, barrier

MANIFEST = "manifest.json"
LATEST = "latest"


class CheckpointError(RuntimeError):
    pass


def tag_for(iteration: int) -> str:
    return f"global_step{iteration}"


def is_checkpoint_path(path: Path) -> bool:
    """Whether `path` is one of our save directories (with `latest`) or checkpoint folders (with a manifest)."""
    return path.is_dir() and ((path / LATEST).exists() or (path / MANIFEST).exists())


def iteration_of(tag: str) -> Optional[int]:
    """N of a global_stepN folder name; None for any other name."""
    m = re.fullmatch(r"global_step(\d+)", tag)
    return int(m.group(1)) if m else None


def _rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


_WRITE_FAILURE = re.compile(r"directory .* does not exist|cannot be opened|No space left|Read-only file system|"
                            r"Permission denied|unexpected pos", re.IGNORECASE)
# what torch.load says of a file whose bytes are damaged (same size, other contents)
_READ_FAILURE = re.compile(r"PytorchStreamReader|zip archive|central directory|invalid header|unexpected EOF", re.IGNORECASE)


def save_checkpoint(engine, save_dir: str, iteration: int, *, client_state: dict, config_yaml: str,
                    rank: int, keep_last_n: Optional[int] = None) -> Path:
    """Collective: every rank calls it. Returns the checkpoint folder."""
    save = Path(save_dir)
    tag = tag_for(iteration)
    folder = save / tag
    if rank == 0:
        save.mkdir(parents=True, exist_ok=True)
        if (folder / MANIFEST).exists() or latest_tag(save) == tag:
            # This run resumed from an earlier step of this folder (`iteration: N`) and has reached a step
            # that an earlier pass saved. Point `latest` at the newest complete step below it before the
            # folder is rewritten, so that a crash meanwhile leaves a `latest` that loads.
            earlier = [t for t in complete_steps(save) if iteration_of(t) < iteration]
            if earlier:
                atomic_write_text(save / LATEST, earlier[-1])
            elif (save / LATEST).exists():
                (save / LATEST).unlink()
            fsync_dir(save)
            print(f"replacing {folder}, saved by an earlier pass over these steps (this run resumed from an earlier "
                  f"step)", flush=True)
        if folder.exists():  # the above, or the leftover of a save that was killed
            shutil.rmtree(folder)
    barrier()
    try:
        if rank == 0:
            folder.mkdir(parents=True, exist_ok=True)
        engine.save_checkpoint(str(save), tag=tag, client_state=client_state, save_latest=False)
    except (OSError, RuntimeError) as exc:
        # torch.save reports a read-only or full disk as "Parent directory ... does not exist"
        if isinstance(exc, RuntimeError) and not _WRITE_FAILURE.search(str(exc)):
            raise
        raise CheckpointError(
            f"cannot write checkpoint {folder} ({' '.join(str(exc).split())[:200]}); check that {save} is writable and "
            f"has free space. `latest` still names {latest_tag(save) or 'no checkpoint'}"
        ) from exc
    import io

    buf = io.BytesIO()
    torch.save(_rng_state(), buf)
    atomic_write_bytes(folder / f"rng_state_rank{rank}.pt", buf.getvalue())
    if rank == 0:
        atomic_write_text(folder / "config.yml", config_yaml)
    barrier()
    listing = [str(p.relative_to(folder)) for p in sorted(folder.rglob("*")) if p.is_file()] if rank == 0 else None
    files = file_records(folder, all_gather_objects(listing)[0])
    if rank == 0:
        fsync_tree(folder)
        manifest = {"iteration": iteration, "world_size": torch.distributed.get_world_size(), "files": files}
        atomic_write_text(folder / MANIFEST, json.dumps(manifest, indent=1))
        atomic_write_text(save / LATEST, tag)
        fsync_dir(save)
        if keep_last_n:
            _prune(save, keep_last_n, keep=tag)
    barrier()
    return folder


def complete_steps(save: Path) -> list[str]:
    """The checkpoint folders of `save` whose save finished (manifest written), oldest first."""
    if not save.is_dir():
        return []
    found = ((iteration_of(p.name), p.name) for p in save.iterdir() if p.is_dir() and (p / MANIFEST).exists())
    return [name for it, name in sorted((it, name) for it, name in found if it is not None)]


def latest_tag(save: Path) -> Optional[str]:
    """What `save`'s `latest` file says, unchecked; None when there is none."""
    latest = save / LATEST
    return latest.read_text().strip() if latest.exists() else None


def _prune(save: Path, keep_last_n: int, keep: str) -> None:
    for name in complete_steps(save)[:-keep_last_n]:
        if name != keep:
            shutil.rmtree(save / name, ignore_errors=True)


def read_torch_file(path: Path, **kwargs) -> Any:
    """torch.load of one checkpoint file (on the CPU), a CheckpointError naming it when it is damaged."""
    try:
        return torch.load(path, map_location="cpu", weights_only=False, **kwargs)
    except Exception as exc:  # of a file that passed verify_checkpoint's sizes: its bytes are damaged
        raise CheckpointError(
            f"checkpoint file {path} cannot be read ({str(exc)[:200]}); it is damaged. Load an earlier checkpoint "
            f"with `iteration: N`"
        ) from exc


def resolve_tag(load_dir: str, iteration: Optional[int] = None) -> Optional[str]:
    """The tag to load: `iteration` when given, else the one named by `latest`; None when nothing was saved."""
    load = Path(load_dir)
    if iteration is not None:
        return tag_for(iteration)
    tag, latest = latest_tag(load), load / LATEST
    if tag is None:
        complete = complete_steps(load)
        if complete:  # starting from scratch here would replace these steps as the run reaches them
            raise CheckpointError(
                f"{load} holds checkpoints ({', '.join(complete)}) but no `{LATEST}` file naming the one to "
                f"resume; write it (e.g. `echo {complete[-1]} > {latest}`) or set `iteration: N`"
            )
        return None
    if iteration_of(tag) is None:
        raise CheckpointError(
            f"{latest} should name a checkpoint folder like global_step100, but holds {tag[:40]!r}; write the step "
            f"to load into it (folders here: {', '.join(complete_steps(load)) or 'none'}) or set `iteration: N`"
        )
    return tag


def verify_checkpoint(folder: Path) -> dict:
    """Check that every file of a checkpoint is present, complete and unchanged; return its manifest.

    Collective where a process group exists (the ranks share the checksum reading).
    """
    manifest_path = folder / MANIFEST
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint folder {folder} does not exist; check `load` and `iteration`")
    if not manifest_path.exists():
        raise CheckpointError(
            f"checkpoint {folder} is incomplete: {MANIFEST} is missing (the save was interrupted). "
            f"Load an earlier checkpoint with `iteration: N`, or delete {folder}"
        )
    try:
        manifest = json.loads(manifest_path.read_text())
        files = dict(manifest["files"])
        sizes = {name: expected_size(record) for name, record in files.items()}
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(
            f"checkpoint {folder} is damaged: {MANIFEST} is not a valid manifest ({exc}). Load an earlier "
            f"checkpoint with `iteration: N`"
        ) from exc
    for name, size in sizes.items():
        path = folder / name
        if not path.exists():
            raise CheckpointError(f"checkpoint {folder} is damaged: file {name} is missing")
        if path.stat().st_size != size:
            raise CheckpointError(
                f"checkpoint {folder} is damaged: file {name} has {path.stat().st_size} bytes, expected {size}"
            )
    problem = checksum_problem(folder, files)  # reached by every rank: the checks above see the same files
    if problem:
        raise CheckpointError(problem)
    return manifest


def _saved_precision(folder: Path) -> Optional[str]:
    """The precision the checkpoint's run resolved (its config.yml), or None where it cannot be read."""
    try:
        saved = yaml.safe_load((folder / "config.yml").read_text())
    except (OSError, yaml.YAMLError):
        return None
    return saved.get("precision") if isinstance(saved, dict) else None


_MP_FILE = re.compile(r"(?:^|_)mp_rank_(\d+)_model_states\.pt$")
_PIPE_FILE = re.compile(r"^layer_\d+-model_\d+-model_states\.pt$")
_ZERO3_FILE = re.compile(r"^zero_pp_rank_\d+_mp_rank_\d+_model_states\.pt$")


def saved_format(folder: Path) -> dict:
    """How a checkpoint folder's files are laid out: model-parallel ranks (tensor x pipeline), whether
    they are pipeline stages, and whether the module is in ZeRO-3's partitioned files."""
    names = [p.name for p in folder.iterdir()]
    return {"mp": len({m.group(1) for n in names if (m := _MP_FILE.search(n))}),
            "pipelined": any(_PIPE_FILE.match(n) for n in names), "zero3": any(_ZERO3_FILE.match(n) for n in names)}


def _layout_problem(folder: Path, tp: int, pp: int) -> Optional[str]:
    found = saved_format(folder)
    if not found["mp"] or (found["mp"] == tp * pp and found["pipelined"] == (pp > 1)):
        return None
    saved = f"{found['mp']} model-parallel rank(s){', as pipeline stages' if found['pipelined'] else ''}"
    return (f"checkpoint {folder} was saved with {saved} and this run has model_parallel_size {tp} x pipe_parallel_size "
            f"{max(pp, 1)}: DeepSpeed would load it into the wrong slices. Reshard it first: python "
            f"tools/reshard_checkpoint.py {folder} NEW_SAVE --model_parallel_size {tp} --pipe_parallel_size {max(pp, 1)}, "
            f"then load NEW_SAVE")


def _model_mismatch(folder: Path, exc: Exception) -> CheckpointError:
    detail = " ".join(str(exc).split())[:400]  # torch lists every mismatching tensor; the first lines say enough
    return CheckpointError(
        f"checkpoint {folder} does not match the configured model ({detail}...). Use the model settings it was "
        f"saved with (its {folder / 'config.yml'}), or a `load` directory that holds this model's checkpoints"
    )


def preload_module(module: torch.nn.Module, load_dir: str, *, iteration: Optional[int] = None) -> Optional[dict]:
    """For a ZeRO-3 run, before DeepSpeed partitions `module`: load a checkpoint saved without ZeRO-3
    (a converted model, a resharded one, a stage 0-2 run), whose files a ZeRO-3 engine cannot read.
    Returns its model-states dict (client state, schedule, step), or None where DeepSpeed loads it
    itself (a ZeRO-3 checkpoint) or there is nothing to load. Collective: every rank reads it."""
    tag = resolve_tag(load_dir, iteration)
    if tag is None:
        return None
    folder = Path(load_dir) / tag
    if folder.is_dir() and (saved_format(folder)["zero3"] or not (folder / "mp_rank_00_model_states.pt").exists()):
        return None  # DeepSpeed reads it; load_checkpoint verifies it then (one checksum pass, not two)
    verify_checkpoint(folder)
    state = read_torch_file(folder / "mp_rank_00_model_states.pt")
    try:
        module.load_state_dict(state["module"], strict=True)
    except RuntimeError as exc:
        raise _model_mismatch(folder, exc) from exc
    state["folder"] = folder
    return state


def load_preloaded(engine, state: dict, *, rank: int, load_optimizer: bool, load_rng: bool, finetune: bool) -> dict:
    """The rest of a `preload_module` load, after DeepSpeed built the ZeRO-3 engine: step, schedule, RNG."""
    folder = state["folder"]
    has_optimizer = state.get("optimizer") is not None or any(folder.glob("*optim_states.pt"))
    if has_optimizer and load_optimizer and not finetune:
        raise CheckpointError(
            f"checkpoint {folder} holds an optimizer state in a format ZeRO-3 cannot read (it was saved by a stage 0-2 "
            f"run); start a new optimizer from its weights with no_load_optim: true, or keep the ZeRO stage it was "
            f"saved with"
        )
    if finetune:
        return {}
    if state.get("lr_scheduler") is not None and engine.lr_scheduler is not None:
        engine.lr_scheduler.load_state_dict(state["lr_scheduler"])
    engine.global_steps = int(state.get("global_steps", 0))
    engine.global_samples = int(state.get("global_samples", engine.global_steps * engine.train_batch_size()))
    engine.skipped_steps = int(state.get("skipped_steps", 0))
    rng_file = folder / f"rng_state_rank{rank}.pt"
    if load_rng and rng_file.exists():
        _set_rng_state(read_torch_file(rng_file))
    return {k: state[k] for k in ("train_state",) if k in state}


def load_checkpoint(engine, load_dir: str, *, rank: int, iteration: Optional[int] = None,
                    load_optimizer: bool = True, load_rng: bool = True, finetune: bool = False,
                    precision: Optional[str] = None, layout: Optional[tuple[int, int]] = None) -> Optional[dict]:
    """Collective. Returns the client state saved with the checkpoint, or None when `load_dir` holds none.

    `precision` (this run's) is checked against the checkpoint's when its optimizer state is loaded:
    DeepSpeed's fp16/bf16 optimizer wrappers save states the others cannot read.
    `layout` (this run's tensor and pipeline sizes) is checked against the checkpoint's files.
    """
    tag = resolve_tag(load_dir, iteration)
    if tag is None:
        return None
    folder = Path(load_dir) / tag
    manifest = verify_checkpoint(folder)
    problem = _layout_problem(folder, *layout) if layout is not None else None
    if problem:
        raise CheckpointError(problem)
    saved_precision = _saved_precision(folder)
    if load_optimizer and not finetune and precision and saved_precision and saved_precision != precision:
        raise CheckpointError(
            f"checkpoint {folder} was saved with precision {saved_precision} and this run uses {precision}: its "
            f"optimizer state does not carry over between precisions. Keep precision: {saved_precision}, or start a "
            f"new optimizer from its weights with no_load_optim: true (or finetune: true, which also resets the step)"
        )
    # no_load_optim keeps the LR schedule and step counters with a fresh optimizer over the loaded
    # weights; finetune takes the weights alone.
    try:
        path, client_state = engine.load_checkpoint(
            load_dir, tag=tag, load_optimizer_states=load_optimizer and not finetune,
            load_lr_scheduler_states=not finetune, load_module_only=finetune,
        )
    except (pickle.UnpicklingError, EOFError, KeyError) as exc:  # torch.load of damaged bytes
        raise CheckpointError(
            f"checkpoint {folder} is damaged: a file of it cannot be read ({exc}). Load an earlier checkpoint "
            f"with `iteration: N`"
        ) from exc
    except RuntimeError as exc:
        if _READ_FAILURE.search(str(exc)):
            raise CheckpointError(
                f"checkpoint {folder} is damaged: a file of it cannot be read ({' '.join(str(exc).split())[:200]}). "
                f"Load an earlier checkpoint with `iteration: N`"
            ) from exc
        if "state_dict" not in str(exc):
            raise
        raise _model_mismatch(folder, exc) from exc
    if path is None:
        raise CheckpointError(f"DeepSpeed could not load checkpoint {folder}")
    refresh = getattr(engine.optimizer, "refresh_fp32_params", None)
    if not load_optimizer and not finetune and refresh is not None:
        # A bf16/fp16 optimizer outside ZeRO keeps the fp32 master weights of its initialisation: its
        # first step would write them back over the loaded weights (finetune's module-only load and
        # ZeRO's loads rebuild them; this one does not).
        refresh()
    rng_file = folder / f"rng_state_rank{rank}.pt"
    if load_rng and not finetune:
        if rng_file.exists():
            _set_rng_state(read_torch_file(rng_file))
        elif manifest.get("world_size") == torch.distributed.get_world_size():
            raise CheckpointError(f"checkpoint {folder} is damaged: file {rng_file.name} is missing")
    return client_state or {}
