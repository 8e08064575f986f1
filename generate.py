"""Generate text from a trained checkpoint, with GPT-NeoX's settings and output format.

    python deepy.py generate.py CONFIGS...     # through the launcher
    python generate.py CONFIGS...              # one process

The configs are the training configs plus generation keys (GenerationArgs, megatron/neox_arguments/generation.py):
`load` (and `iteration`) name the checkpoint; `text_gen_type` is unconditional (num_samples texts
from an end-of-document token), input-file (one prompt per `prompt_end` in sample_input_file) or
interactive (prompts from stdin); `maximum_tokens`, `temperature` (0 = greedy), `top_k`, `top_p`
and `recompute` (no KV cache) shape the decoding. Samples go to `sample_output_file` as JSON
lines: context, text, length, finished, duration_seconds (and kv_ratio for SepLLM models; with
`return_logits`, logits: the raw logit of every generated token).

The checkpoint runs as an in-memory transformers model (megatron.checkpointing.export), so a
SepLLM model decodes under its SepLLM settings: the prefill windows for the prompt, the generate
windows (`generate_local_window_size`, or per layer) for every new token.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Iterator, Optional


def read_prompts(path: str, prompt_end: str) -> list[str]:
    """The prompts of an input file: its text split at every `prompt_end`, empty pieces dropped."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"sample_input_file {path} does not exist")
    text = Path(path).read_text(encoding="utf-8")
    return [p for p in text.split(prompt_end) if p.strip()] if prompt_end else [text]


def generation_config(gen, tokenizer, vocab_rows: int):
    """transformers GenerationConfig of GPT-NeoX's generation keys (0 disables top_k / top_p; temperature 0 is greedy).

    The rows that pad the vocabulary (ids the tokenizer does not have) are never generated.
    """
    from transformers import GenerationConfig

    sample = gen.temperature > 0
    padding_rows = list(range(len(tokenizer), vocab_rows))
    return GenerationConfig(
        suppress_tokens=padding_rows or None,
        max_new_tokens=int(gen.maximum_tokens),
        do_sample=sample,
        temperature=float(gen.temperature) if sample else 1.0,
        top_k=int(gen.top_k) if sample else None,
        top_p=float(gen.top_p) if sample and gen.top_p > 0 else 1.0,
        use_cache=not gen.recompute,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        output_logits=bool(gen.return_logits),
        return_dict_in_generate=True,
    )


def generate_one(model, tokenizer, prompt: Optional[str], config) -> dict:
    """One sample for `prompt` (None: unconditional, from an end-of-document token); with `config.output_logits`
    also the logit of every generated token (the end-of-document token included when it ends the sample)."""
    import torch

    from megatron.checkpointing.sepllm_hf import kv_report

    if prompt is None:
        ids = [tokenizer.eos_token_id]
    else:
        ids = tokenizer(prompt)["input_ids"]
        if not ids:
            raise ValueError(f"prompt {prompt!r} encodes to no tokens")
    device = next(model.parameters()).device
    input_ids = torch.tensor([ids], device=device)
    start = time.time()
    with torch.no_grad():
        out = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), generation_config=config)
    new = out.sequences[0, input_ids.shape[1]:].tolist()
    # The model's raw logit of each generated token (before temperature, top-k/top-p and suppression).
    logits = [float(step[0, token]) for step, token in zip(out.logits, new)] if config.output_logits else None
    finished = bool(new) and new[-1] == tokenizer.eos_token_id
    if finished:
        new = new[:-1]
    record = {
        "context": prompt if prompt is not None else "",
        "text": tokenizer.decode(new, skip_special_tokens=False, clean_up_tokenization_spaces=False),
        "length": len(new),
        "finished": finished,
        "duration_seconds": round(time.time() - start, 4),
    }
    if logits is not None:
        record["logits"] = logits
    report = kv_report(model)
    if report is not None and "kv_ratio" in report:
        record["kv_ratio"] = report["kv_ratio"]
    return record


def prompts_for(gen) -> Iterator[Optional[str]]:
    kind = gen.kind
    if kind == "unconditional":
        for _ in range(int(gen.num_samples)):
            yield None
    elif kind == "input-file":
        if not gen.sample_input_file:
            raise ValueError("text_gen_type input-file needs sample_input_file")
        yield from read_prompts(gen.sample_input_file, gen.prompt_end)
    else:  # interactive
        print(f"Enter a prompt and end it with {gen.prompt_end!r}; end the input (Ctrl-D) to stop.", flush=True)
        buffered = ""
        for line in sys.stdin:
            buffered += line
            while gen.prompt_end and gen.prompt_end in buffered:
                prompt, buffered = buffered.split(gen.prompt_end, 1)
                if prompt.strip():
                    yield prompt


def main(argv: list[str]) -> list[dict]:
    from megatron.neox_arguments import ConfigError, NeoXArgs

    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        sys.exit(0)
    if not argv:
        sys.exit("usage: python generate.py CONFIG.yml [MORE.yml ...]  (--help: the generation keys)")
    try:
        args = NeoXArgs.from_files(argv)
        args.validate_for("generate")
    except ConfigError as exc:
        sys.exit(f"config error: {exc}")
    if int(os.environ.get("RANK", "0")) != 0:
        print(f"generate.py: rank {os.environ['RANK']} has nothing to do; rank 0 generates every sample", flush=True)
        return []
    import torch

    from megatron.atomic_io import atomic_write_text
    from megatron.checkpointing.export import inference_model
    from megatron.checkpointing.sepllm_hf import kv_report

    torch.manual_seed(int(args.training.seed))
    model, tokenizer = inference_model(args)
    gen = args.generation
    config = generation_config(gen, tokenizer, model.config.vocab_size)
    interactive = gen.text_gen_type == "interactive"
    records = []
    for prompt in prompts_for(gen):
        record = generate_one(model, tokenizer, prompt, config)
        records.append(record)
        if interactive:
            print(record["text"], flush=True)
    if not interactive:
        atomic_write_text(gen.sample_output_file, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        print(f"wrote {len(records)} samples to {gen.sample_output_file}", flush=True)
    report = kv_report(model)
    if report is not None:
        print(f"SepLLM: {json.dumps(report)}", flush=True)
    return records


if __name__ == "__main__":
    from megatron.checkpointing.checkpoint import CheckpointError

    try:
        main(sys.argv[1:])
    except (CheckpointError, ValueError, OSError) as exc:  # bad input: a message, not a traceback
        sys.exit(f"generate.py: {exc}")
