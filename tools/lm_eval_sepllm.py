#!/usr/bin/env python
"""lm-evaluation-harness on a transformers model under training-free SepLLM settings.

    python tools/lm_eval_sepllm.py --model hf \
        --model_args pretrained=MODEL_DIR,sepllm_config=llama3_sepllm_a3_n256.yml --tasks gsm8k_cot

model_args are lm-eval's HFLM arguments plus:
    sepllm_config=PATH     upstream training-free YAML (SepLLM, StreamingLLM, FixLLM or vanilla)
    sepllm_mode=MODE       sepllm | streamingllm | fixllm | vanilla (overrides the YAML's flags)
    sepcache=a:s:w:c       generate with a SepCache of these sizes (real KV savings) instead of the mask
    sepllm_KEY=VALUE       override one SepLLM setting of the YAML (upstream names), e.g.
                           sepllm_Layer_num=30,sepllm_separator_token_ids=smollm2 for SmolLM2 with a Llama-3 YAML
Without sepllm_config / sepllm_mode the model runs unmodified; a model converted from a SepLLM-trained
checkpoint (tools/convert_neox_to_hf.py) runs under the SepLLM settings it carries. Log-likelihood requests run with the
SepLLM mask; the kept-KV ratio (and the share of the causal attention map computed) is printed beside
the scores and stored under "sepllm" in --output_path. Needs requirements/requirements-eval.txt.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Optional

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


TOOL_ARGS = ("sepllm_config", "sepllm_mode", "sepcache")


def split_model_args(text: str) -> tuple[dict, dict, dict]:
    """(HFLM kwargs, SepLLM tool kwargs, SepLLM setting overrides) from lm-eval's key=value,key=value string."""
    import dataclasses

    from lm_eval.utils import simple_parse_args_string

    from megatron.neox_arguments.sepllm import SepLLMArgs

    args = simple_parse_args_string(text)
    sep = {k: args.pop(k) for k in list(args) if k.startswith("sepllm_") or k == "sepcache"}
    fields = {f.name for f in dataclasses.fields(SepLLMArgs)}
    overrides = {k[len("sepllm_"):]: sep.pop(k) for k in list(sep) if k not in TOOL_ARGS}
    unknown = sorted(f"sepllm_{k}" for k in set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown SepLLM model_args {unknown}; use {', '.join(TOOL_ARGS)} or sepllm_SETTING "
                         f"with an upstream setting name (e.g. sepllm_Layer_num, sepllm_prefill_local_window_size)")
    return args, sep, overrides


def check_pretrained(hf_args: dict) -> None:
    """A local `pretrained` path that does not exist is a typo, not a Hub repository id."""
    where = str(hf_args.get("pretrained", ""))
    if not where:
        raise ValueError("model_args needs pretrained=MODEL_DIR (a transformers directory, or its folder plus gguf_file=NAME)")
    # A Hub id is NAME or NAMESPACE/NAME; anything else can only be a local path.
    local = os.path.isabs(where) or where.startswith((".", "~")) or where.strip("/").count("/") > 1
    if local and not os.path.isdir(os.path.expanduser(where)):
        raise FileNotFoundError(f"pretrained={where} is not a directory; pass a transformers model directory "
                                "(for a .gguf file: pretrained=ITS_FOLDER,gguf_file=ITS_NAME)")


def parse_sepcache(text: str) -> tuple[int, int, int, int]:
    parts = str(text).split(":")
    if len(parts) != 4:
        raise ValueError(f"sepcache must be a:s:w:c (init, separator, local and total sizes), got {text!r}")
    try:
        return tuple(int(x) for x in parts)
    except ValueError:
        raise ValueError(f"sepcache sizes must be integers, got {text!r}") from None


def cache_policy(mode: str) -> str:
    """The SepCache policy that serves an attention rule (mask.attention_mode's names)."""
    from megatron.sepllm.cache.budget import SEPLLM as SEPLLM_POLICY, STREAMINGLLM
    from megatron.sepllm.mask import SEPLLM, STREAMING

    policies = {SEPLLM: SEPLLM_POLICY, STREAMING: STREAMINGLLM}
    if mode not in policies:
        raise ValueError(f"sepcache= keeps initial, separator and recent tokens (SepLLM) or initial and recent ones "
                         f"(StreamingLLM), but the settings ask for the {mode} attention rule, which neither serves: "
                         f"drop sepcache, or set sepllm_mode=sepllm or sepllm_mode=streamingllm")
    return policies[mode]


def check_sep_args(sep_args: dict, overrides: Optional[dict] = None) -> Optional[tuple[int, int, int, int]]:
    """Validate the SepCache sizes, the YAML and the overrides before any model loads; returns the sizes."""
    from megatron.sepllm.hf import SepCache, build_sepllm_args
    from megatron.sepllm.mask import SEPLLM, attention_mode

    sizes = parse_sepcache(sep_args["sepcache"]) if "sepcache" in sep_args else None
    mode = SEPLLM
    if "sepllm_config" in sep_args or "sepllm_mode" in sep_args or overrides:
        args, _ = build_sepllm_args(sep_args.get("sepllm_config"), mode=sep_args.get("sepllm_mode"), **(overrides or {}))
        mode = attention_mode(args)
    if sizes is not None:
        SepCache(*sizes, policy=cache_policy(mode))
    return sizes


def build_lm(hf_args: dict, sep_args: dict, batch_size, device, overrides: Optional[dict] = None):
    from lm_eval.models.huggingface import HFLM

    import megatron.checkpointing.sepllm_hf  # noqa: F401  (registers the model types of our converted SepLLM models)
    from megatron.sepllm.hf import SepCache, apply_sepllm

    sizes = check_sep_args(sep_args, overrides)

    class SepLLMHFLM(HFLM):
        """HFLM whose generation uses a fresh SepCache per call when `sepcache` is given."""

        def _model_generate(self, context, max_length, stop, **generation_kwargs):
            if sizes is not None:  # the cache keeps what the runtime's attention rule keeps
                generation_kwargs["past_key_values"] = SepCache(*sizes, policy=cache_policy(runtime.mode))
            return super()._model_generate(context, max_length, stop, **generation_kwargs)

    import torch

    kw = dict(hf_args)
    kw.setdefault("attn_implementation", "sdpa")
    # HFLM's own default is "cuda", which fails while loading on a machine without one.
    kw["device"] = device or ("cuda" if torch.cuda.is_available() else "cpu")
    lm = SepLLMHFLM(batch_size=batch_size, **kw)
    if "sepllm_config" in sep_args or "sepllm_mode" in sep_args or sizes is not None or overrides:
        runtime = apply_sepllm(lm.model, sep_args.get("sepllm_config"), tokenizer=lm.tokenizer,
                               mode=sep_args.get("sepllm_mode"), **(overrides or {}))
    else:  # a converted SepLLM-trained model brings its own runtime (None for plain models)
        runtime = getattr(lm.model, "_sepllm_runtime", None)
    return lm, runtime


def main(argv=None) -> dict:
    args = parse_args(argv)
    from megatron.inference.lm_eval_tasks import import_lm_eval, simple_evaluate, task_manager_for

    # Every check before the model loads: lm-eval installed, model_args, task names.
    import_lm_eval()
    hf_args, sep_args, overrides = split_model_args(args.model_args)
    check_pretrained(hf_args)
    check_sep_args(sep_args, overrides)
    tasks = [t for t in args.tasks.split(",") if t]
    tm = task_manager_for(tasks, args.include_path)
    from lm_eval.utils import make_table

    lm, runtime = build_lm(hf_args, sep_args, args.batch_size, args.device, overrides)
    results = simple_evaluate(
        model=lm, tasks=tasks, num_fewshot=args.num_fewshot, limit=args.limit, task_manager=tm,
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
    try:
        main()
    except (ImportError, ValueError, OSError) as exc:  # bad input, no lm-eval, no Hub: a message, not a traceback
        sys.exit(f"lm_eval_sepllm: {exc}")
