"""Convert one of our checkpoints (any ZeRO stage) to a HuggingFace transformers directory.

    python tools/convert_neox_to_hf.py --input_dir SAVE/global_stepN --output_dir OUT \
        [--config_file CFG.yml [CFG2.yml ...]] [--precision fp32|fp16|bf16] [--architecture neox|llama]

OUT loads with `transformers.AutoModelForCausalLM.from_pretrained(OUT)`: GPTNeoXForCausalLM for
GPT-NeoX shapes, LlamaForCausalLM for Llama shapes (RMSNorm + SwiGLU). A model trained with SepLLM
attention becomes a `sepllm_gpt_neox` / `sepllm_llama` model that keeps it; load it after
`import megatron.checkpointing.sepllm_hf`, or with `trust_remote_code=True`.
The config defaults to the config.yml stored in the checkpoint folder; --input_dir may also be the
save directory itself (its `latest` checkpoint, or --iteration N).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input_dir", required=True, help="checkpoint folder (SAVE/global_stepN) or save directory SAVE")
    p.add_argument("--output_dir", required=True, help="directory to write the transformers model to")
    p.add_argument("--config_file", nargs="+", default=None,
                   help="the YAML files used for training (default: config.yml inside the checkpoint folder)")
    p.add_argument("--iteration", type=int, default=None, help="with a save directory as --input_dir: the step to convert")
    p.add_argument("--precision", choices=("fp32", "fp16", "bf16"), default="fp32", help="dtype of the written weights")
    p.add_argument("--architecture", choices=("neox", "llama"), default=None,
                   help="HF architecture (default: llama for RMSNorm + SwiGLU models, else neox)")
    p.add_argument("--skip_tokenizer", action="store_true", help="do not write the tokenizer (e.g. its files are not at hand)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --output_dir")
    return p.parse_args(argv)


def main(argv: list[str]) -> Path:
    args = parse_args(argv)
    from megatron.checkpointing import export

    folder = export.checkpoint_folder(args.input_dir, args.iteration)
    # the step folder --input_dir resolves to (itself, or one inside it) is what replacing would delete
    export.check_output_dir(args.output_dir, args.overwrite, source=folder)
    config = export.checkpoint_args(folder, args.config_file)
    try:
        tokenizer = None if args.skip_tokenizer else export.hf_tokenizer(config.tokenizer)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{exc} (relative paths in the run's config start at {os.getcwd()}); run from the "
                                "training folder, give --config_file with the tokenizer's path, or pass --skip_tokenizer") from exc
    state = export.read_model_state_dict(folder, config.model.num_layers)
    model = export.to_hf_model(config, state, args.architecture, export.PRECISIONS[args.precision], tokenizer=tokenizer)
    out = export.save_hf_directory(model, tokenizer, args.output_dir, overwrite=args.overwrite)
    print(f"wrote {model.config.model_type} model ({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, "
          f"{args.precision}) from {folder} to {out}", flush=True)
    return out


if __name__ == "__main__":
    from megatron.checkpointing.checkpoint import CheckpointError

    try:
        main(sys.argv[1:])
    except (CheckpointError, ValueError, OSError) as exc:  # bad input: a message, not a traceback
        # the checkpoint messages name the config key; this tool takes the step as a flag
        sys.exit(f"convert_neox_to_hf: {exc}".replace("`iteration: N`", "--iteration N"))
