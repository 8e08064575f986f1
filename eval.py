"""Evaluate a trained checkpoint on lm-evaluation-harness tasks, as GPT-NeoX's eval.py.

    python eval.py CONFIGS... --eval_tasks lambada_openai piqa [--limit N] [--num_fewshot K]
    python deepy.py eval.py CONFIGS... [--eval_tasks ...]   # without it, the config key `eval_tasks`

`load` (and `iteration`) name the checkpoint; it runs as an in-memory transformers model
(megatron.checkpointing.export) under lm-eval's HFLM, so a SepLLM model is scored under its SepLLM
attention. Prints lm-eval's table and the SepLLM kept-KV / attention-map ratios, and writes the
results as JSON to `<eval_results_prefix>_eval_results.json` (eval_results.json without a prefix).
`--include_path DIR` adds task YAML files from DIR (e.g. tasks on local data).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

def parse_cli(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("configs", nargs="+", help="config files, merged in order (later files win)")
    p.add_argument("--eval_tasks", nargs="+", default=None, help="lm-eval task names (default: the config's eval_tasks)")
    p.add_argument("--num_fewshot", type=int, default=None, help="few-shot examples per task (default: the task's own)")
    p.add_argument("--limit", type=float, default=None, help="evaluate only this many documents per task (a fraction if < 1)")
    p.add_argument("--batch_size", type=int, default=1, help="sequences per forward pass")
    p.add_argument("--include_path", default=None, help="directory with extra task YAML files")
    cli = p.parse_args(argv)
    if cli.batch_size < 1:
        p.error(f"--batch_size must be >= 1, got {cli.batch_size}")
    if cli.num_fewshot is not None and cli.num_fewshot < 0:
        p.error(f"--num_fewshot must be >= 0, got {cli.num_fewshot}")
    if cli.limit is not None and cli.limit <= 0:
        p.error(f"--limit must be > 0 (a count, or a fraction below 1), got {cli.limit:g}")
    return cli


def evaluate(model, tokenizer, tasks: list[str], *, num_fewshot=None, limit=None, batch_size: int = 1,
             include_path=None, seed: int = 1234, task_manager=None) -> dict[str, Any]:
    """lm-eval's results dict for an in-memory transformers model."""
    from megatron.inference.lm_eval_tasks import import_lm_eval, simple_evaluate, task_manager_for

    _, HFLM = import_lm_eval()
    manager = task_manager or task_manager_for(tasks, include_path)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=str(next(model.parameters()).device))
    return simple_evaluate(
        model=lm, tasks=list(tasks), num_fewshot=num_fewshot, limit=limit, log_samples=False,
        task_manager=manager, random_seed=seed, numpy_random_seed=seed,
        torch_random_seed=seed, fewshot_random_seed=seed,
    )


def main(argv: list[str]) -> dict[str, Any]:
    cli = parse_cli(argv)
    from megatron.neox_arguments import ConfigError, NeoXArgs

    try:
        args = NeoXArgs.from_files(cli.configs)
        args.validate_for("eval")
    except ConfigError as exc:
        sys.exit(f"config error: {exc}")
    tasks = cli.eval_tasks or args.generation.eval_tasks
    if not tasks:
        sys.exit("eval.py: no tasks; pass --eval_tasks TASK [TASK ...] or set eval_tasks in the config")
    from megatron.inference.lm_eval_tasks import task_manager_for

    manager = task_manager_for(tasks, cli.include_path)  # fails before the model loads: no lm-eval, unknown task
    if int(os.environ.get("RANK", "0")) != 0:
        print(f"eval.py: rank {os.environ['RANK']} has nothing to do; rank 0 evaluates", flush=True)
        return {}
    from lm_eval.utils import make_table

    from megatron.atomic_io import atomic_write_text
    from megatron.checkpointing.export import inference_model
    from megatron.checkpointing.sepllm_hf import kv_report
    from megatron.neox_arguments.readiness import eval_results_path

    if cli.batch_size > 1:
        # Batched generation tasks pad on the left; the initial tokens must then start at each
        # row's first real token to see what an unpadded row sees.
        args.sepllm.BATCH_ADAPTIVE_INIT_POS = True
    model, tokenizer = inference_model(args)
    results = evaluate(model, tokenizer, tasks, num_fewshot=cli.num_fewshot, limit=cli.limit,
                       batch_size=cli.batch_size, include_path=cli.include_path, seed=int(args.training.seed),
                       task_manager=manager)
    print(make_table(results), flush=True)
    summary = {"results": results["results"], "configs": cli.configs, "load": args.checkpoint.load}
    report = kv_report(model)
    if report is not None:
        summary["sepllm"] = report
        print(f"SepLLM kept KV ratio (last forward) {report.get('kv_ratio', float('nan')):.4f}, "
              f"attention-map ratio (all forwards) {report.get('attn_map_ratio', float('nan')):.4f}", flush=True)
    path = eval_results_path(args.generation.eval_results_prefix)
    atomic_write_text(path, json.dumps(summary, indent=1, default=str))
    print(f"wrote {path}", flush=True)
    return summary


if __name__ == "__main__":
    from megatron.checkpointing.checkpoint import CheckpointError

    try:
        main(sys.argv[1:])
    except (CheckpointError, ImportError, ValueError, OSError) as exc:  # bad input or no Hub: a message, not a traceback
        sys.exit(f"eval.py: {exc}")
