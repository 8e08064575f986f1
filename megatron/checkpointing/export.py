"""Our checkpoints -> a plain state dict, an in-memory transformers model, a HuggingFace directory.

    folder = checkpoint_folder("save")                       # save/ (follows `latest`) or save/global_stepN
    args = checkpoint_args(folder)                           # the config.yml stored with it, or given files
    state = read_model_state_dict(folder, args.model.num_layers)  # any ZeRO stage, tensor/pipeline parallel
    model = to_hf_model(args, state, dtype=torch.float32)    # GPTNeoX/Llama (SepLLM classes when trained with SepLLM)
    tokenizer = hf_tokenizer(args.tokenizer)
    save_hf_directory(model, tokenizer, "out")               # what AutoModelForCausalLM.from_pretrained loads

Reading the weights: ZeRO stages 0-2 keep every parameter whole in `mp_rank_00_model_states.pt`
(in the training precision, the values the forward pass used). ZeRO-3 shards them over the ranks'
optimizer files; DeepSpeed's zero_to_fp32 helpers gather the fp32 master weights. Tensor- and
pipeline-parallel checkpoints are merged by megatron.parallel.reshard.
"""
from __future__ import annotations

import copy
import os
import shutil
from pathlib import Path
from typing import Optional, Sequence

import torch

from megatron.checkpointing.checkpoint import (LATEST, MANIFEST, CheckpointError, complete_steps, iteration_of, read_torch_file,
                                               resolve_tag, tag_for, verify_checkpoint)
from megatron.checkpointing.hf_mapping import hf_config_from_args, to_hf_state_dict

MODEL_STATES = "mp_rank_00_model_states.pt"
ZERO3_MODEL_STATES = "zero_pp_rank_*_mp_rank_00_model_states.pt"
CONFIG_FILE = "config.yml"
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}  # --precision choices


# ------------------------------------------------------------------------------ reading


def checkpoint_folder(path: str | os.PathLike, iteration: Optional[int] = None) -> Path:
    """The checkpoint folder for `path`: a save directory (its `latest`, or `iteration`) or a global_stepN folder.

    The folder's manifest is checked, so a checkpoint whose save was interrupted is refused.
    """
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint path {path} is not a directory; pass the `save` directory or one of its global_stepN folders")
    is_folder = (path / MANIFEST).exists() or iteration_of(path.name) is not None
    if is_folder and not (path / LATEST).exists():
        if iteration is not None and path.name != tag_for(iteration):
            raise CheckpointError(
                f"{path} is already one checkpoint ({path.name}) but iteration {iteration} was asked for; "
                f"pass its save directory {path.parent} with the iteration, or drop the iteration"
            )
        folder = path  # verify_checkpoint tells an interrupted save from a complete one
    elif iteration is not None or (path / LATEST).exists():
        folder = path / resolve_tag(str(path), iteration)
        if iteration is not None and not folder.is_dir():
            steps = complete_steps(path)
            raise CheckpointError(
                f"{path} has no checkpoint for iteration {iteration}"
                + (f"; it has {', '.join(steps[-5:])}" if steps else "; it holds no complete checkpoint")
            )
    else:
        steps = complete_steps(path)
        saves = sorted(p.name for p in path.iterdir() if p.is_dir() and (p / LATEST).exists())
        hint = ""
        if steps:
            hint = f"; pass one of its checkpoints ({', '.join(steps[-3:])}) or the iteration"
        elif saves:
            hint = f"; it holds save directories ({', '.join(saves[:3])}): pass one of them, e.g. {path / saves[0]}"
        elif interrupted := sorted(p.name for p in path.iterdir() if p.is_dir() and iteration_of(p.name) is not None):
            # no complete step (steps is empty), so every step folder is a save that did not finish
            hint = (f"; its step folders ({', '.join(interrupted[-3:])}) are saves that did not finish (no {MANIFEST}), "
                    "which cannot be loaded")
        raise CheckpointError(f"{path} is neither a checkpoint folder nor a save directory with `latest`{hint}")
    verify_checkpoint(folder)
    return folder


def checkpoint_args(folder: str | os.PathLike, config_files: Optional[Sequence[str | os.PathLike]] = None):
    """NeoXArgs of the checkpoint: from `config_files` (the YAML files used for training) when given,
    else from the resolved config.yml saved in the checkpoint folder."""
    from megatron.neox_arguments import NeoXArgs

    if config_files:
        return NeoXArgs.from_files([str(p) for p in config_files])
    stored = Path(folder) / CONFIG_FILE
    if not stored.exists():
        raise CheckpointError(f"checkpoint {folder} has no {CONFIG_FILE}; pass the training config files (--config_file)")
    return NeoXArgs.from_files([str(stored)])


def _model_parallel(folder: Path) -> bool:
    """Saved by tensor-parallel ranks (mp_rank_01...) or pipeline stages (layer_XX-model_YY-...)?"""
    return any(folder.glob("mp_rank_01_model_states.pt")) or any(folder.glob("layer_*-model_*-model_states.pt"))


def read_model_state_dict(folder: str | os.PathLike, num_layers: Optional[int] = None) -> dict[str, torch.Tensor]:
    """Our model's full state dict (CPU tensors) from a checkpoint folder saved with any ZeRO stage, or
    split by tensor / pipeline parallelism (merged by megatron.parallel.reshard, which needs `num_layers`)."""
    folder = Path(folder)
    if _model_parallel(folder):
        if num_layers is None:
            raise CheckpointError(f"checkpoint {folder} is split by tensor or pipeline parallelism; reading it needs the layer count")
        from megatron.parallel.reshard import read_model

        return read_model(folder, int(num_layers))
    whole = folder / MODEL_STATES
    if whole.exists():
        return _module_state_dict(whole)
    if any(folder.glob(ZERO3_MODEL_STATES)):
        return _gather_zero3(folder)
    raise CheckpointError(f"checkpoint {folder} has neither {MODEL_STATES} nor ZeRO-3 shards ({ZERO3_MODEL_STATES})")


def _module_state_dict(path: Path) -> dict[str, torch.Tensor]:
    state = read_torch_file(path)
    module = state.get("module")
    if module is None:
        raise CheckpointError(f"{path} holds no model weights (`module`); was it saved by DeepSpeed's save_checkpoint?")
    expected: dict[str, torch.Size] = {}
    for group in state.get("param_shapes") or []:
        expected.update(group)
    wrong = [name for name, shape in expected.items() if name in module and module[name].shape != shape]
    if wrong:
        raise CheckpointError(f"{path} holds partitioned parameters ({wrong[:3]}...) but no ZeRO-3 shards to gather them from")
    return {name: t.detach().clone() for name, t in module.items()}


def _gather_zero3(folder: Path) -> dict[str, torch.Tensor]:
    from megatron.parallel.distributed import prepare_accelerator_env

    prepare_accelerator_env()
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    state = get_fp32_state_dict_from_zero_checkpoint(str(folder.parent), tag=folder.name)
    return {name: t.detach().clone() for name, t in state.items()}


def vocab_rows(state_dict: dict[str, torch.Tensor]) -> int:
    """The padded vocabulary size of a checkpoint: rows of the input embedding."""
    key = "embedding.word_embeddings.weight"
    if key not in state_dict:
        raise CheckpointError(f"the checkpoint has no {key}; is it a checkpoint of this framework's GPTModel?")
    return int(state_dict[key].shape[0])


# ------------------------------------------------------------------------------ to transformers


def check_matches_config(args, state_dict: dict[str, torch.Tensor]) -> None:
    """Refuse weights whose names or shapes differ from the model `args` describes (a config that does
    not belong to the checkpoint), before the conversion fails somewhere inside a reshape."""
    from megatron.model import GPTModel

    with torch.device("meta"):  # shapes only: no memory, no initialisation
        model = GPTModel(args.model, args.sepllm, vocab_rows(state_dict))
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    buffers = {name for name, _ in model.named_buffers()}
    problems = [f"{name} is {tuple(t.shape)} in the checkpoint, {expected[name]} under the config"
                for name, t in state_dict.items() if name in expected and tuple(t.shape) != expected[name]]
    missing = sorted({name for name, _ in model.named_parameters()} - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected) - buffers)
    if missing:
        problems.append(f"the checkpoint lacks {', '.join(missing[:3])}" + (f" and {len(missing) - 3} more" if len(missing) > 3 else ""))
    if unexpected:
        problems.append(f"the config has no {', '.join(unexpected[:3])}" + (f" and {len(unexpected) - 3} more" if len(unexpected) > 3 else ""))
    if problems:
        m = args.model
        raise CheckpointError(
            f"the checkpoint does not match the configured model (num_layers {m.num_layers}, hidden_size {m.hidden_size}, "
            f"norm {m.norm}, activation {m.activation}): {'; '.join(problems[:3])}. Use the configs the checkpoint was "
            "trained with (the config.yml stored in its global_stepN folder has them)"
        )


def infer_arch(model_args) -> str:
    """'llama' for RMSNorm + SwiGLU models, else 'neox'."""
    return "llama" if model_args.norm == "rmsnorm" and model_args.activation == "swiglu" else "neox"


# Tokenizer types hf_tokenizer turns into a transformers tokenizer (lower case).
HF_TOKENIZER_TYPES = ("hftokenizer", "hfautotokenizer", "gpt2bpetokenizer", "spmtokenizer")


def conversion_problems(args) -> list[str]:
    """Why the model of `args` cannot become a transformers model, which tools/convert_neox_to_hf.py,
    generate.py and eval.py all need (empty when it can); read from the config alone."""
    from megatron.checkpointing.hf_mapping import exportable_problems
    from megatron.checkpointing.sepllm_hf import UNCONVERTIBLE_SETTINGS

    arch = infer_arch(args.model)
    problems = [f"as HF arch {arch!r}: {p}" for p in exportable_problems(args.model, arch)]
    network = [name for name in UNCONVERTIBLE_SETTINGS if getattr(args.sepllm, name)]
    if network:
        problems.append(f"{', '.join(network)} change the network itself, which transformers' GPT-NeoX/Llama layers cannot compute")
    if str(args.tokenizer.tokenizer_type).lower() not in HF_TOKENIZER_TYPES:
        problems.append(f"tokenizer_type {args.tokenizer.tokenizer_type} has no transformers equivalent")
    return problems


def hf_config(args, vocab_size: int, arch: str, dtype: torch.dtype = torch.float32):
    """The HF config of our model: a plain GPTNeoX/Llama config for full attention, the SepLLM
    model type (settings under `sepllm`) otherwise."""
    from megatron.checkpointing.sepllm_hf import check_convertible, sepllm_config, stored_settings
    from megatron.sepllm.mask import FULL, attention_mode

    sep = args.sepllm
    check_convertible(sep)
    config = hf_config_from_args(args.model, None, vocab_size, arch)
    if attention_mode(sep) != FULL:
        config = sepllm_config(config, arch)
        config.sepllm = stored_settings(sep)
    config.dtype = dtype
    return config


def to_hf_model(args, state_dict: dict[str, torch.Tensor], arch: Optional[str] = None,
                dtype: torch.dtype = torch.float32, tokenizer=None, attn_implementation: str = "sdpa"):
    """An in-memory transformers model with our checkpoint's weights, in `dtype`, in eval mode.

    The special token ids (BOS, EOS, padding) come from `tokenizer`; without one they are unset
    rather than left at transformers' defaults, which belong to other vocabularies.
    """
    from megatron.checkpointing.sepllm_hf import CLASSES

    arch = arch or infer_arch(args.model)
    if arch not in CLASSES:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {sorted(CLASSES)}")
    config = hf_config(args, vocab_rows(state_dict), arch, dtype)  # first: it names settings HF cannot express
    check_matches_config(args, state_dict)
    config._attn_implementation = attn_implementation
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        setattr(config, name, getattr(tokenizer, name, None))
    hf_sd = to_hf_state_dict(state_dict, args.model, arch)
    _, plain_cls, _, sepllm_cls = CLASSES[arch]
    model_cls = sepllm_cls if hasattr(config, "sepllm") else plain_cls
    model = model_cls(config)
    missing, unexpected = model.load_state_dict(hf_sd, strict=False)
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    missing = [k for k in missing if k not in tied and not k.endswith("inv_freq")]
    if missing or unexpected:
        raise RuntimeError(f"HF model does not match the converted weights: missing {missing[:5]}, unexpected {unexpected[:5]}")
    if config.tie_word_embeddings:
        model.tie_weights()
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        setattr(model.generation_config, name, getattr(config, name))
    stops = generation_stop_ids(tokenizer)
    if len(stops) > 1:
        model.generation_config.eos_token_id = stops
    return model.to(dtype).eval()


def generation_stop_ids(tokenizer) -> list[int]:
    """The ids generation stops at: EOS (our training end-of-document token) and, where the tokenizer's
    own config named another end token, that one too.

    A chat model ends its turns with its own token (SmolLM2-Instruct's <|im_end|>), which hf_tokenizer
    replaces as EOS by the end-of-document token; without it, a converted chat model would not stop.
    """
    if tokenizer is None or tokenizer.eos_token_id is None:
        return []
    stops = [tokenizer.eos_token_id]
    own = tokenizer.init_kwargs.get("eos_token")
    own = getattr(own, "content", own)  # a str, or an AddedToken
    if isinstance(own, str):
        own_id = tokenizer.convert_tokens_to_ids(own)
        if own_id is not None and own_id != tokenizer.unk_token_id and own_id not in stops:
            stops.append(own_id)
    return stops


# ------------------------------------------------------------------------------ tokenizer


def hf_tokenizer(tok_args):
    """A transformers tokenizer that encodes exactly as the model's training tokenizer (TokenizerArgs).

    EOS is the training tokenizer's end-of-document token and padding its pad token. A tokenizer.json
    next to a tokenizer_config.json (what convert_hf_to_neox.py writes) loads with that config, so
    chat templates and special tokens survive a round trip.
    """
    from transformers import AutoTokenizer, PreTrainedTokenizerFast, SentencePieceBackend

    from megatron.data.tokenizers import build_tokenizer

    kind, vocab, merges = tok_args.tokenizer_type, tok_args.vocab_file, tok_args.merge_file
    ours = build_tokenizer(kind, vocab, merges)  # also checks that the files exist
    kind = kind.lower()
    if kind == "hftokenizer":
        folder = Path(vocab).parent
        if (folder / "tokenizer_config.json").exists() and Path(vocab).name == "tokenizer.json":
            tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        else:
            tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(vocab))
    elif kind == "hfautotokenizer":
        path = Path(vocab)
        if path.suffix == ".gguf":
            tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name, local_files_only=True)
        else:
            tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    elif kind == "gpt2bpetokenizer":
        # Our GPT2BPETokenizer is a `tokenizers` BPE with GPT-2's byte-level rules; wrap that very object.
        tokenizer = PreTrainedTokenizerFast(tokenizer_object=copy.deepcopy(ours._tok))
    elif kind == "spmtokenizer":
        # sentencepiece itself, as our SPMTokenizer uses it (no BOS/EOS added to documents).
        tokenizer = SentencePieceBackend(vocab_file=str(vocab))
    else:
        raise ValueError(f"tokenizer_type {tok_args.tokenizer_type} has no transformers equivalent; convert with --skip_tokenizer")
    tokenizer.eos_token = tokenizer.convert_ids_to_tokens(ours.eod)
    tokenizer.pad_token = tokenizer.convert_ids_to_tokens(ours.pad)
    if tokenizer.bos_token is None:
        tokenizer.bos_token = tokenizer.eos_token
    _check_same_encoding(tokenizer, ours)
    return tokenizer


_PROBE = "SepLLM keeps separators: initial tokens, commas, periods!\n\tAnd a local window?  Yes; 42."


def _check_same_encoding(tokenizer, ours) -> None:
    expected = list(ours.tokenize(_PROBE))
    got = tokenizer(_PROBE)["input_ids"]
    if got != expected:
        raise ValueError(
            f"the transformers tokenizer built for {ours.name} encodes differently from the training tokenizer "
            f"({got[:8]}... vs {expected[:8]}...); convert with --skip_tokenizer and supply a tokenizer yourself"
        )


# ------------------------------------------------------------------------------ writing


def check_output_dir(out_dir: str | os.PathLike, overwrite: bool = False, source: Optional[str | os.PathLike] = None) -> Path:
    """Refuse a non-empty output directory unless `overwrite`, and one that holds `source`, the input
    being converted, which replacing it would delete (checked before any slow work)."""
    out = Path(out_dir).resolve()
    if source is not None and Path(source).resolve().is_relative_to(out):
        raise ValueError(f"output directory {out} holds the input {source}; write the conversion somewhere else")
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"output directory {out} is a file; choose a directory path")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"output directory {out} is not empty; choose another one or pass --overwrite")
    return out


def save_hf_directory(model, tokenizer, out_dir: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write a from_pretrained-loadable directory; atomic: a crash leaves no half-written `out_dir`."""
    from megatron.atomic_io import fsync_dir, fsync_tree
    from megatron.checkpointing.sepllm_hf import is_sepllm_model, remote_code_auto_map, write_remote_code

    out = check_output_dir(out_dir, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    if is_sepllm_model(model):
        arch = "llama" if model.config.model_type == "sepllm_llama" else "neox"
        model.config.auto_map = remote_code_auto_map(arch)
    model.save_pretrained(tmp)
    if is_sepllm_model(model):
        write_remote_code(tmp)
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
    fsync_tree(tmp)
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old{os.getpid()}")
        os.replace(out, old)
    os.replace(tmp, out)
    fsync_dir(out.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return out


# ------------------------------------------------------------------------------ inference


def inference_model(args, device: Optional[torch.device] = None):
    """(transformers model, tokenizer) for generate.py and eval.py: the checkpoint at `load`
    (`iteration`, default latest) with the model shape and SepLLM settings of `args`.

    On CUDA the model runs in the configured precision; on CPU in fp32.
    """
    if not args.checkpoint.load:
        raise ValueError("set `load` to the checkpoint directory to read the model from")
    if device is None:
        device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    dtype = args.precision.dtype if device.type == "cuda" else torch.float32
    folder = checkpoint_folder(args.checkpoint.load, args.checkpoint.iteration)
    tokenizer = hf_tokenizer(args.tokenizer)
    model = to_hf_model(args, read_model_state_dict(folder, args.model.num_layers), dtype=dtype, tokenizer=tokenizer)
    return model.to(device), tokenizer
