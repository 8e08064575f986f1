"""Import a HuggingFace GPT-NeoX (Pythia) or Llama model into our checkpoint format.

    python tools/convert_hf_to_neox.py --hf_model DIR_OR_GGUF --output_dir SAVE [--config_out CFG.yml]

DIR_OR_GGUF is a local transformers directory or a .gguf file (dequantised by transformers).
SAVE gets a DeepSpeed-format `global_step0` (with manifest, config.yml and `latest`), the
tokenizer under SAVE/tokenizer/, and CFG.yml (default SAVE/model.yml): the model's shape, the
tokenizer, `load: SAVE` and `finetune: true`. Continue training with

    python deepy.py train.py SAVE/model.yml configs/sepllm/n64.yml YOUR_DATA_AND_TRAINING.yml

The imported model was trained with full attention, so CFG.yml sets USE_ORIGINAL_FULL_ATTEN: true;
a SepLLM config added after it switches SepLLM on. A directory written by convert_neox_to_hf.py
for a SepLLM model (model type sepllm_gpt_neox / sepllm_llama) brings its SepLLM settings along.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

HF_ARCHS = {"gpt_neox": "neox", "llama": "llama", "sepllm_gpt_neox": "neox", "sepllm_llama": "llama"}
TOKENIZER_DIR = "tokenizer"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")
DEFAULT_CONFIG_NAME = "model.yml"


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hf_model", required=True, help="transformers model directory or .gguf file")
    p.add_argument("--output_dir", required=True, help="checkpoint directory to create (the `load` of the new config)")
    p.add_argument("--config_out", default=None, help=f"config file to write (default: OUTPUT_DIR/{DEFAULT_CONFIG_NAME})")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --output_dir and an existing --config_out")
    return p.parse_args(argv)


# ------------------------------------------------------------------------------ reading HF


def load_hf(path: str | os.PathLike):
    """(model in fp32, tokenizer or None) from a local transformers directory or a .gguf file."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import megatron.checkpointing.sepllm_hf  # noqa: F401  (registers the SepLLM model types)

    path = Path(path)
    if path.is_file() and path.suffix == ".gguf":
        where = dict(pretrained_model_name_or_path=str(path.parent), gguf_file=path.name)
    elif path.is_dir():
        if not (path / "config.json").is_file():
            from megatron.checkpointing.checkpoint import is_checkpoint_path

            raise FileNotFoundError(
                f"--hf_model {path} has no config.json: "
                + ("it is one of our checkpoints already (train from it with `load`)" if is_checkpoint_path(path)
                   else "pass a transformers model directory (config.json and weights) or a .gguf file")
            )
        where = dict(pretrained_model_name_or_path=str(path))
    else:
        raise FileNotFoundError(f"--hf_model {path} is neither a transformers directory nor a .gguf file")
    try:
        model = AutoModelForCausalLM.from_pretrained(**where, dtype=torch.float32, local_files_only=True)
    except (OSError, ValueError):
        raise
    except Exception as exc:  # e.g. a truncated safetensors or gguf file: name it, not only the parser's words
        raise ValueError(f"--hf_model {path}: its weights cannot be read ({type(exc).__name__}: {exc})") from exc
    # transformers builds an empty tokenizer for a folder without tokenizer files; that is "none".
    has_files = path.is_file() or any((path / name).exists() for name in TOKENIZER_FILES)
    tokenizer = AutoTokenizer.from_pretrained(**where, local_files_only=True) if has_files else None
    return model.eval(), tokenizer


def plain_hf_config(hf_config):
    """The GPTNeoXConfig / LlamaConfig of `hf_config` (a SepLLM config's plain twin)."""
    from megatron.checkpointing.sepllm_hf import CLASSES

    kind = hf_config.model_type
    if kind not in HF_ARCHS:
        raise ValueError(f"HF model type {kind!r} is not supported; only {sorted(HF_ARCHS)} are")
    if not kind.startswith("sepllm_"):
        return hf_config
    values = hf_config.to_dict()
    for key in ("model_type", "transformers_version", "sepllm", "auto_map", "architectures"):
        values.pop(key, None)
    return CLASSES[HF_ARCHS[kind]][0](**values)


# ------------------------------------------------------------------------------ our config


def vocab_divisor(tokenizer_vocab: int, model_vocab: int) -> int:
    """A make_vocab_size_divisible_by that pads the tokenizer's vocabulary to exactly the model's rows."""
    from megatron.model import padded_vocab_size

    if tokenizer_vocab > model_vocab:
        raise ValueError(f"the tokenizer has {tokenizer_vocab} tokens but the model only {model_vocab} embedding rows")
    for divisor in (128, 64, 32, 16, 8, 4, 2, 1):
        if padded_vocab_size(tokenizer_vocab, divisor) == model_vocab:
            return divisor
    return model_vocab  # rounds any size in [1, model_vocab] up to model_vocab


def config_values(model_args, sep_args, save_dir: Path, vocab_file: Path, divisor: int, separator_ids: list[int]) -> dict[str, Any]:
    """The keys of the written config: every model key that differs from its default, the
    tokenizer, the SepLLM settings and where to load from."""
    from megatron.neox_arguments.model import ModelArgs

    defaults = dataclasses.asdict(ModelArgs())
    values = {k: v for k, v in dataclasses.asdict(model_args).items() if v != defaults[k] and v is not None}
    values["make_vocab_size_divisible_by"] = divisor
    if sep_args is None:
        values.update(USE_ORIGINAL_FULL_ATTEN=True, USE_SEP_ATTN_KERNEL_ACCELERATOR=False)
        if separator_ids:
            values["separator_token_ids"] = separator_ids
    else:
        values.update(dataclasses.asdict(sep_args))
    values.update(tokenizer_type="HFTokenizer", vocab_file=str(vocab_file), load=str(save_dir), finetune=True)
    return values


def config_text(values: dict[str, Any], hf_model: str, sepllm: bool) -> str:
    from megatron.neox_arguments.yaml_io import dump_yaml

    lines = [f"# Imported from {hf_model} by tools/convert_hf_to_neox.py.", "# Continue training with:",
             "#   python deepy.py train.py THIS.yml [configs/sepllm/n64.yml] YOUR_DATA_AND_TRAINING.yml"]
    if not sepllm:
        lines.append("# The model was trained with full attention; a SepLLM config listed after this file switches SepLLM on.")
        lines.append("# configs/sepllm/*.yml set the Pythia separator ids; for another tokenizer, set separator_token_ids")
        lines.append("# (the value below) again in a file listed after them.")
    return "\n".join(lines) + "\n" + dump_yaml(values)


# ------------------------------------------------------------------------------ writing


def write_checkpoint(state_dict, args, save_dir: Path) -> Path:
    """Save `state_dict` with DeepSpeed through the trainer's checkpoint code (global_step0 + latest)."""
    import torch

    from megatron.parallel.distributed import init_distributed

    env = init_distributed()
    import deepspeed

    from megatron.checkpointing.checkpoint import save_checkpoint
    from megatron.model import GPTModel

    vocab = int(state_dict["embedding.word_embeddings.weight"].shape[0])
    model = GPTModel(args.model, args.sepllm, vocab, device="meta")
    model.load_state_dict(state_dict, strict=True, assign=True)
    engine, _, _, _ = deepspeed.initialize(
        model=model, config={"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 0}},
        dist_init_required=False,
    )
    with torch.no_grad():
        folder = save_checkpoint(engine, str(save_dir), 0, client_state={}, config_yaml=args.to_yaml(), rank=env.rank)
    return folder


def _fresh_dir(path: Path, overwrite: bool) -> Path | None:
    """An empty `path`; a directory it replaces (--overwrite) is moved aside, not deleted, and returned,
    so that an import that fails part-way can put it back."""
    from megatron.checkpointing.export import check_output_dir

    check_output_dir(path, overwrite)
    old = None
    if path.exists():
        old = path.with_name(f".{path.name}.old{os.getpid()}")
        os.replace(path, old)
    path.mkdir(parents=True)
    return old


def import_model(hf_model, tokenizer, output_dir: str | os.PathLike, config_out: str | os.PathLike | None = None,
                 *, source: str = "a transformers model", overwrite: bool = False) -> Path:
    """Write a loaded transformers model (and its tokenizer) as our checkpoint + config; returns the config path."""
    from megatron.checkpointing.export import hf_tokenizer
    from megatron.checkpointing.hf_mapping import from_hf_state_dict, model_args_from_hf_config, sep_args_from_hf_config
    from megatron.data.tokenizers import build_tokenizer
    from megatron.neox_arguments import NeoXArgs
    from megatron.atomic_io import atomic_write_text
    from megatron.sepllm.hf.families import separator_ids_from_tokenizer

    save_dir = Path(output_dir).resolve()
    config_out = Path(config_out).resolve() if config_out else save_dir / DEFAULT_CONFIG_NAME
    if tokenizer is None or not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"{source} has no fast (tokenizer.json) tokenizer; save one next to the model "
                         "(tokenizer.save_pretrained) so that training and conversion back can use it")
    plain = plain_hf_config(hf_model.config)
    model_args = model_args_from_hf_config(plain)
    sep_args = sep_args_from_hf_config(hf_model.config)
    state = from_hf_state_dict(hf_model.state_dict(), model_args, HF_ARCHS[hf_model.config.model_type])

    replaced = _fresh_dir(save_dir, overwrite)
    try:
        tokenizer.save_pretrained(save_dir / TOKENIZER_DIR)
        vocab_file = save_dir / TOKENIZER_DIR / "tokenizer.json"
        divisor = vocab_divisor(build_tokenizer("HFTokenizer", str(vocab_file)).vocab_size, int(plain.vocab_size))
        values = config_values(model_args, sep_args, save_dir, vocab_file, divisor, separator_ids_from_tokenizer(tokenizer))
        args = NeoXArgs.from_dict(values, source=str(config_out))
        hf_tokenizer(args.tokenizer)  # refuses a saved tokenizer that training would read differently
        write_checkpoint(state, args, save_dir)
        atomic_write_text(config_out, config_text(values, source, sep_args is not None))
    except BaseException:
        shutil.rmtree(save_dir, ignore_errors=True)
        if replaced is not None:
            os.replace(replaced, save_dir)  # the replaced import is back as it was
        raise
    if replaced is not None:
        shutil.rmtree(replaced, ignore_errors=True)
    print(f"imported {plain.model_type} model from {source} into {save_dir}/global_step0; config: {config_out}", flush=True)
    return config_out


def main(argv: list[str]) -> Path:
    from megatron.checkpointing.export import check_output_dir

    a = parse_args(argv)
    check_output_dir(a.output_dir, a.overwrite, source=a.hf_model)
    if a.config_out:  # checked before the model loads, as --output_dir is
        out = Path(a.config_out)
        if out.is_dir():
            raise ValueError(f"--config_out {out} is a folder; give a file name such as {out / DEFAULT_CONFIG_NAME}")
        if out.exists() and not a.overwrite:
            raise ValueError(f"--config_out {out} exists; pass --overwrite to replace it, or choose another file")
        if not out.resolve().parent.is_dir():
            raise ValueError(f"--config_out {out}: its folder {out.resolve().parent} does not exist")
    hf_model, tokenizer = load_hf(a.hf_model)
    return import_model(hf_model, tokenizer, a.output_dir, a.config_out, source=str(a.hf_model), overwrite=a.overwrite)


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except (ValueError, OSError) as exc:  # bad input: a message, not a traceback
        sys.exit(f"convert_hf_to_neox: {exc}")
