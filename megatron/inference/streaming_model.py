"""Loading a model and tokenizer for streaming evaluation: a transformers directory, a GGUF file, or one
of our checkpoints (a save directory with `latest`, or a global_stepN folder)."""
from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def load_model_and_tokenizer(path: str, *, dtype: str = "float32", device: str = "cpu", attn_implementation: str = "sdpa"):
    """(model, tokenizer) from a transformers model directory, a .gguf file (de-quantized) or our checkpoint."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is unknown; choose one of {sorted(DTYPES)}")
    from megatron.checkpointing.checkpoint import is_checkpoint_path

    p = Path(path)
    if is_checkpoint_path(p):
        from megatron.checkpointing.export import checkpoint_args, checkpoint_folder, hf_tokenizer, read_model_state_dict, to_hf_model

        folder = checkpoint_folder(p)
        args = checkpoint_args(folder)  # the resolved config saved with the checkpoint
        tokenizer = hf_tokenizer(args.tokenizer)
        model = to_hf_model(args, read_model_state_dict(folder, args.model.num_layers), dtype=DTYPES[dtype], tokenizer=tokenizer)
        return model.to(device).eval(), tokenizer
    import megatron.checkpointing.sepllm_hf  # noqa: F401  (registers sepllm_* model types: convert_neox_to_hf.py output)

    kw: dict = {}
    if p.suffix == ".gguf":
        if not p.is_file():
            raise FileNotFoundError(f"GGUF file {p} does not exist")
        source, kw["gguf_file"] = str(p.parent), p.name
    else:
        if not p.is_dir():
            raise FileNotFoundError(f"model directory {p} does not exist (pass a transformers model directory or a .gguf file)")
        if not (p / "config.json").is_file():
            from megatron.checkpointing.checkpoint import CheckpointError
            from megatron.checkpointing.export import checkpoint_folder

            try:  # it is not a transformers directory; maybe a save directory's parent, or a damaged checkpoint
                checkpoint_folder(p)
            except CheckpointError as exc:
                raise FileNotFoundError(f"{p} is not a transformers model directory (it has no config.json) and not one of "
                                        f"our checkpoints: {exc}") from None
        source = str(p)
    tokenizer = AutoTokenizer.from_pretrained(source, **kw)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=DTYPES[dtype], attn_implementation=attn_implementation, **kw)
    return model.to(device).eval(), tokenizer
