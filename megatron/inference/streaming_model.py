"""Loading a model and tokenizer for streaming evaluation: a transformers directory or a GGUF file."""
from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def load_model_and_tokenizer(path: str, *, dtype: str = "float32", device: str = "cpu", attn_implementation: str = "sdpa"):
    """(model, tokenizer) from a transformers model directory or a .gguf file (de-quantized)."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is unknown; choose one of {sorted(DTYPES)}")
    p = Path(path)
    kw: dict = {}
    if p.suffix == ".gguf":
        if not p.is_file():
            raise FileNotFoundError(f"GGUF file {p} does not exist")
        source, kw["gguf_file"] = str(p.parent), p.name
    else:
        if not p.is_dir():
            raise FileNotFoundError(f"model directory {p} does not exist (pass a transformers model directory or a .gguf file)")
        source = str(p)
    tokenizer = AutoTokenizer.from_pretrained(source, **kw)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=DTYPES[dtype], attn_implementation=attn_implementation, **kw)
    return model.to(device).eval(), tokenizer
