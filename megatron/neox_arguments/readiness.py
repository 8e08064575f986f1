"""What train, generate and eval need on top of a valid config: inputs that exist, sizes that are set.

Kept out of NeoXArgs.from_files because configs are also loaded to inspect or convert them,
without data or tokenizer files at hand (the upstream sample configs point at cluster paths).
"""
from __future__ import annotations

import glob
import os
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    from megatron.neox_arguments.neox_args import NeoXArgs

TASKS = ("train", "generate", "eval")

# Tokenizers whose vocab_file is a name (an encoding) or that need no file.
_NO_VOCAB_FILE = ("CharLevelTokenizer",)
_VOCAB_IS_NAME = ("TiktokenTokenizer",)
_VOCAB_MAY_BE_FOLDER = ("HFAutoTokenizer",)  # a transformers tokenizer folder, or a .gguf file


def check_ready(args: "NeoXArgs", task: str) -> list[str]:
    """Problems that would stop `task`; empty when it can start."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {TASKS}")
    problems = _tokenizer_files(args)
    if not problems:
        problems += _padded_vocab(args)
    c = args.checkpoint
    if task == "train":
        t = args.training
        if t.train_iters is None:
            problems.append("`train_iters` is not set; set the number of optimizer steps to train for")
        if t.train_micro_batch_size_per_gpu is None and t.train_batch_size is None:
            problems.append("set `train_micro_batch_size_per_gpu` (sequences per rank per step) or `train_batch_size`")
        if args.data.data_path is None and args.data.train_data_paths is None:
            problems.append("no training data: set `data_path` (a tokenized dataset prefix) or train/valid/test_data_paths")
        problems += _data_files(args)
        if c.save is not None and c.checkpoint_factor is None and not c.extra_save_iters:
            problems.append(f"`save: {c.save}` is set but neither checkpoint_factor nor extra_save_iters says when to save; set checkpoint_factor")
        if c.finetune and c.load is None:
            problems.append("`finetune: true` needs `load` (the checkpoint to start from)")
        for key, folder in (("save", c.save), ("log_dir", args.logging.log_dir), ("tensorboard_dir", args.logging.tensorboard_dir)):
            problems += _output_folder(key, folder)
        problems += _save_folder_conflicts(c.save, c.load, c.finetune)
    else:
        if c.load is None:
            problems.append(f"{task} needs `load`, the checkpoint directory to read the model from")
        from megatron.checkpointing.export import conversion_problems

        problems += [f"{task}.py runs the model through transformers, which cannot take it: {p}"
                     for p in conversion_problems(args)]
        g = args.generation
        if task == "generate" and g.kind == "input-file" and g.sample_input_file:
            if os.path.isdir(g.sample_input_file):
                problems.append(f"`sample_input_file: {g.sample_input_file}` is a folder; give the file of prompts")
            elif not os.path.isfile(g.sample_input_file):
                problems.append(f"`sample_input_file: {g.sample_input_file}` does not exist")
            elif not _has_text(g.sample_input_file):
                problems.append(f"`sample_input_file: {g.sample_input_file}` holds no prompt (one per line)")
        if task == "generate" and g.sample_output_file:
            problems += _output_file("sample_output_file", g.sample_output_file)
        if task == "eval":
            problems += _output_file("eval_results_prefix", eval_results_path(g.eval_results_prefix), g.eval_results_prefix)
    return problems


def eval_results_path(prefix) -> str:
    """Where eval.py writes its results."""
    return f"{prefix}_eval_results.json" if prefix else "eval_results.json"


def _has_text(path: str) -> bool:
    with open(path, encoding="utf-8", errors="replace") as f:
        return any(line.strip() for line in f)


def _nearest_existing(path: str) -> str:
    parent = os.path.abspath(path)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    return parent


def _output_folder(key: str, folder) -> list[str]:
    """Why `folder` cannot be created or written (found now, not at the first save after hours of training)."""
    if not folder:
        return []
    if os.path.exists(folder) and not os.path.isdir(folder):
        return [f"`{key}: {folder}` is a file; give a folder"]
    base = _nearest_existing(folder)
    if not os.path.isdir(base):
        return [f"`{key}: {folder}` cannot be created: {base} is a file"]
    if not os.access(base, os.W_OK | os.X_OK):
        return [f"`{key}: {folder}` cannot be created or written: no write permission in {base}"]
    return []


def _output_file(key: str, path: str, value: Optional[str] = None) -> list[str]:
    """Problems writing `path`, the file that `key: value` names (value: the path itself when not given)."""
    named = f"`{key}: {path}`" if value is None else f"`{key}: {value}` (the file {path})"
    if os.path.isdir(path):
        return [f"{named} is a folder; give a file name"]
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        return [f"{named}: its folder {parent} does not exist"]
    if not os.access(parent, os.W_OK | os.X_OK):
        return [f"{named}: no write permission in {parent}"]
    return []


def _save_folder_conflicts(save, load, finetune: bool) -> list[str]:
    """A run whose `save` folder holds checkpoints it does not continue would replace them as it reaches
    their steps (and move `latest` back): another run's, or, with finetune (a new run from step 0), the
    ones it starts from."""
    if not save:
        return []
    same = bool(load) and os.path.realpath(load) == os.path.realpath(save)
    if same and not finetune:
        return []
    from pathlib import Path

    from megatron.checkpointing.checkpoint import complete_steps, latest_tag

    latest, steps = latest_tag(Path(save)), complete_steps(Path(save))
    listed = ", ".join(steps[:4]) + (" ..." if len(steps) > 4 else "")
    if same:
        return [f"`finetune: true` starts a new run at step 0 from `load: {load}`, and `save` is the same folder: it would "
                f"replace the checkpoints it starts from ({listed}) as it reaches their steps; choose another `save` folder"] if steps else []
    held = f"latest {latest[:40]}" if latest is not None else listed
    if not held:
        return []
    return [f"`save: {save}` holds another run's checkpoints ({held}) and this run does not load from it: set "
            f"`load: {save}` to continue that run, or choose another `save` folder"]


def _tokenizer_files(args: "NeoXArgs") -> list[str]:
    tok = args.tokenizer
    if tok.tokenizer_type in _NO_VOCAB_FILE:
        return []
    problems = []
    if tok.vocab_file is None:
        problems.append(f"tokenizer_type {tok.tokenizer_type} needs `vocab_file`")
    elif tok.tokenizer_type in _VOCAB_MAY_BE_FOLDER:
        if not os.path.exists(tok.vocab_file):
            problems.append(f"`vocab_file: {tok.vocab_file}` does not exist (relative paths start at {os.getcwd()}); "
                            f"{tok.tokenizer_type} takes a transformers tokenizer folder or a .gguf file")
    elif tok.tokenizer_type not in _VOCAB_IS_NAME and not os.path.isfile(tok.vocab_file):
        problems.append(f"`vocab_file: {tok.vocab_file}` does not exist (relative paths start at {os.getcwd()})")
    if tok.tokenizer_type == "GPT2BPETokenizer":
        if tok.merge_file is None:
            problems.append("tokenizer_type GPT2BPETokenizer needs `merge_file`")
        elif not os.path.isfile(tok.merge_file):
            problems.append(f"`merge_file: {tok.merge_file}` does not exist")
    return problems


def _padded_vocab(args: "NeoXArgs") -> list[str]:
    """A given padded_vocab_size must hold the tokenizer's vocabulary (found here, not after the ranks started)."""
    size, mp = args.model.padded_vocab_size, args.parallel.model_parallel_size
    if size is None:
        return []
    if size % mp:
        return [f"`padded_vocab_size: {size}` must be divisible by model_parallel_size {mp}"]
    from megatron.data.tokenizers import build_tokenizer

    tok = args.tokenizer
    try:
        vocab = build_tokenizer(tok.tokenizer_type, tok.vocab_file, tok.merge_file).vocab_size
    except Exception:  # noqa: BLE001 - a tokenizer that does not load is reported where it is built
        return []
    if size < vocab:
        return [f"`padded_vocab_size: {size}` is smaller than the tokenizer's {vocab} tokens; set it to at least {vocab}, "
                f"or remove it (the vocabulary is then padded to a multiple of make_vocab_size_divisible_by)"]
    return []


def _data_files(args: "NeoXArgs") -> list[str]:
    """A problem for each data prefix whose .bin/.idx pair is missing (found here, not after the ranks started)."""
    d = args.data
    named = [("data_path", d.data_path)] if d.data_path is not None else []
    for kind in ("train", "valid", "test"):
        named += [(f"{kind}_data_paths", p) for p in getattr(d, f"{kind}_data_paths") or []]
        named += [(f"{kind}_label_data_paths", p) for p in getattr(d, f"{kind}_label_data_paths") or []]
    problems = []
    for key, prefix in named:
        missing = [p for p in (f"{prefix}.bin", f"{prefix}.idx") if not os.path.isfile(p)]
        if not missing:
            continue
        if prefix.endswith((".bin", ".idx")) and os.path.isfile(prefix[:-4] + ".bin") and os.path.isfile(prefix[:-4] + ".idx"):
            fix = f"give the prefix without the extension: `{key}: {prefix[:-4]}`"
        else:
            # A prefix that names the input file or its folder instead of preprocess_data.py's output (PREFIX_text_document).
            pattern = os.path.join(glob.escape(prefix), "*.idx") if os.path.isdir(prefix) else glob.escape(prefix) + "*.idx"
            found = sorted(p[:-4] for p in glob.glob(pattern) if os.path.isfile(p[:-4] + ".bin"))
            fix = f"did you mean `{key}: {found[0]}`?" if found else "write them with tools/preprocess_data.py, or fix the path"
        problems.append(f"`{key}` entry {prefix!r}: {' and '.join(missing)} not found (relative paths start at {os.getcwd()}); "
                        f"data paths are prefixes of a PREFIX.bin/PREFIX.idx pair; {fix}")
    return problems
