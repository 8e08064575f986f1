#!/usr/bin/env python
"""lm-evaluation-harness on a transformers model under training-free SepLLM settings.

    python tools/lm_eval_sepllm.py --model hf \
        --model_args pretrained=MODEL_DIR,sepllm_config=llama3_sepllm_a3_n256.yml --tasks gsm8k_cot

model_args are lm-eval's HFLM arguments plus:
    sepllm_config=PATH     upstream training-free YAML (SepLLM, StreamingLLM, FixLLM or vanilla)
    sepllm_mode=MODE       sepllm | streamingllm | fixllm | vanilla (overrides the YAML's flags)
    sepcache=a:s:w:c       generate with a SepCache of these sizes (real KV savings) instead of the mask
Without sepllm_config / sepllm_mode the model runs unmodified. Log-likelihood requests run with the
SepLLM mask; the kept-KV ratio (and the share of the causal attention map computed) is printed beside
the scores and stored under "sepllm" in --output_path. Needs requirements/requirements-eval.txt.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="hf", choices=["hf"], help="lm-eval model type (only hf)")
    p.add_argument("--model_args", required=True, help="comma-separated key=value pairs (HFLM arguments plus sepllm_*)")
    p.add_argument("--tasks", required=True, help="comma-separated lm-eval task names")
    p.add_argument("--num_fewshot", type=int, default=None)
    p.add_argument("--batch_size", default="1")
    p.add_argument("--device", default=None)
    p.add_argument("--limit", type=float, default=None, help="examples per task (or a fraction)")
    p.add_argument("--include_path", default=None, help="directory with extra task YAML files (e.g. local tasks)")
    p.add_argument("--gen_kwargs", default=None, help="generation arguments, e.g. temperature=0,max_gen_toks=256")
    p.add_argument("--output_path", default=None, help="write the results JSON here")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def split_model_args(text: str) -> tuple[dict, dict]:
    """(HFLM kwargs, SepLLM kwargs) from lm-eval's key=value,key=value string."""
    from lm_eval.utils import simple_parse_args_string

    args = simple_parse_args_string(text)
    sep = {k: args.pop(k) for k in list(args) if k.startswith("sepllm_") or k == "sepcache"}
    unknown = set(sep) - {"sepllm_config", "sepllm_mode", "sepcache"}
    if unknown:
        raise ValueError(f"unknown SepLLM model_args {sorted(unknown)}; use sepllm_config, sepllm_mode or sepcache")
    return args, sep


def parse_sepcache(text: str) -> tuple[int, int, int, int]:
    parts = str(text).split(":")
    if len(parts) != 4:
        raise ValueError(f"sepcache must be a:s:w:c (init, separator, local and total sizes), got {text!r}")
    try:
        return tuple(int(x) for x in parts)
    except ValueError:
        raise ValueError(f"sepcache sizes must be integers, got {text!r}") from None


def build_lm(hf_args: dict, sep_args: dict, batch_size, device):
    from lm_eval.models.huggingface import HFLM

    from megatron.sepllm.hf import SepCache, apply_sepllm

    sizes = parse_sepcache(sep_args["sepcache"]) if "sepcache" in sep_args else None
    if sizes is not None:
        SepCache(*sizes)  # validate before loading the model

    class SepLLMHFLM(HFLM):
        """HFLM whose generation uses a fresh SepCache per call when `sepcache` is given."""

        def _model_generate(self, context, max_length, stop, **generation_kwargs):
            if sizes is not None:
                generation_kwargs["past_key_values"] = SepCache(*sizes)
            return super()._model_generate(context, max_length, stop, **generation_kwargs)

    kw = dict(hf_args)
    kw.setdefault("attn_implementation", "sdpa")
    if device is not None:
        kw["device"] = device
    lm = SepLLMHFLM(batch_size=batch_size, **kw)
    runtime = None
    if "sepllm_config" in sep_args or "sepllm_mode" in sep_args or sizes is not None:
        runtime = apply_sepllm(lm.model, sep_args.get("sepllm_config"), tokenizer=lm.tokenizer, mode=sep_args.get("sepllm_mode"))
    return lm, runtime


def main(argv=None) -> dict:
    args = parse_args(argv)
    import lm_eval
    from lm_eval.tasks import TaskManager
    from lm_eval.utils import make_table

    hf_args, sep_args = split_model_args(args.model_args)
    lm, runtime = build_lm(hf_args, sep_args, args.batch_size, args.device)
    tm = TaskManager(include_path=args.include_path) if args.include_path else TaskManager()
    results = lm_eval.simple_evaluate(
        model=lm, tasks=args.tasks.split(","), num_fewshot=args.num_fewshot, limit=args.limit, task_manager=tm,
        gen_kwargs=args.gen_kwargs, random_seed=args.seed, numpy_random_seed=args.seed, torch_random_seed=args.seed,
    )
    report = runtime.kv_report() if runtime is not None else {"mode": "vanilla", "kv_ratio": 1.0, "attn_map_ratio": 1.0}
    results["sepllm"] = report
    print(make_table(results))
    print(f"SepLLM ({report['mode']}): kept-KV ratio {report.get('kv_ratio', float('nan')):.4f}, "
          f"attention-map ratio {report.get('attn_map_ratio', float('nan')):.4f}")
    if args.output_path:
        out = Path(args.output_path)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        with tmp.open("w") as f:
            json.dump({"results": results["results"], "sepllm": report, "config": {"model_args": args.model_args, "tasks": args.tasks}},
                      f, indent=2, default=str)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(out)
    return results


if __name__ == "__main__":
    main()
