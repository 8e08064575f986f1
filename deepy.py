#!/usr/bin/env python
"""Validate a config, then run a script on every rank through DeepSpeed's launcher.

    python deepy.py train.py configs/pythia/160M.yml configs/sepllm/n64.yml configs/local_setup.yml
    python deepy.py -d configs train.py demo            # -d prefixes the paths; .yml may be left out

The config is loaded and checked here, before any process starts; train.py, eval.py and
generate.py are also checked for what they need (data, tokenizer files, a checkpoint). Each
rank then runs `python SCRIPT CONFIG...` with the same config paths. The launcher keys of the
config (hostfile, include, exclude, num_gpus, num_nodes, master_addr, master_port, launcher,
deepspeed_slurm, comment, ...) work as in GPT-NeoX; without CUDA the ranks run on the CPU.
deepy.py exits with the launcher's exit status, which is the failing rank's.
"""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys

REPO_ROOT = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, REPO_ROOT)

from megatron.neox_arguments import ConfigError, NeoXArgs  # noqa: E402
from megatron.neox_arguments.launch_command import (  # noqa: E402
    LaunchPlan,
    expected_world_size,
    plan_launch,
    task_for_script,
)


_DEEPY_OPTIONS = ("-d", "--conf_dir", "-h", "--help")


def parse_cli(argv: list[str]) -> argparse.Namespace:
    """deepy's own arguments; `script_args` holds the options after the config files, which go to the script."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False,
                                     epilog="Options after the config files go to the script, as in GPT-NeoX: "
                                            "python deepy.py eval.py CONFIG.yml --eval_tasks lambada_openai")
    parser.add_argument("user_script", help="script every rank runs: train.py, eval.py, generate.py or your own")
    parser.add_argument("conf_file", nargs="+", help="config files, merged in order (later files win)")
    parser.add_argument("-d", "--conf_dir", default=None, help="directory prefixed to every config path")
    own, seen_script, i = argv, False, 0
    while i < len(argv):
        token = argv[i]
        if token.split("=")[0] in ("-d", "--conf_dir"):
            i += 1 if "=" in token else 2
            continue
        if token.startswith("-") and seen_script and token not in _DEEPY_OPTIONS:
            own = argv[:i]
            break
        seen_script = seen_script or not token.startswith("-")
        i += 1
    cli = parser.parse_args(own)
    cli.script_args = argv[len(own):]
    return cli


def check_script_args(user_script: str, configs: list[str], script_args: list[str]) -> str | None:
    """Why the script would refuse `script_args`, before any rank starts; None when it takes them."""
    name = os.path.basename(user_script)
    if not script_args or name not in ("train.py", "generate.py", "eval.py"):
        return None
    if name != "eval.py":
        return (f"{name} takes config files only, not {shlex.join(script_args)}; set such settings as keys in a config "
                f"file")
    import importlib.util

    spec = importlib.util.spec_from_file_location("_eval_cli", user_script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # eval.py imports its heavy parts inside main()
    try:
        module.parse_cli([*configs, *script_args])
    except SystemExit:  # argparse printed what is wrong
        return f"eval.py does not take {shlex.join(script_args)} (see python eval.py --help)"
    return None


def config_paths(names: list[str], conf_dir: str | None) -> list[str]:
    """Config paths as GPT-NeoX's deepy.py resolves them: optional directory prefix, `.yml` added when no suffix."""
    paths = [os.path.join(conf_dir, n) if conf_dir else n for n in names]
    # An existing path (a folder, say) is kept as given, so that the loader names what it is.
    return [p if p.endswith((".yml", ".yaml", ".json")) or os.path.exists(p) else p + ".yml" for p in paths]


def run(plan: LaunchPlan) -> int:
    """Run the launcher; its exit status (128 + signal when killed by a signal)."""
    env = {**os.environ, **plan.env}
    print("deepy.py: " + shlex.join(plan.command()), flush=True)
    code = subprocess.run(plan.command(), env=env).returncode
    return code if code >= 0 else 128 - code


def main(argv: list[str] | None = None) -> int:
    cli = parse_cli(sys.argv[1:] if argv is None else argv)
    configs = config_paths(cli.conf_file, cli.conf_dir)
    if cli.user_script.endswith((".yml", ".yaml", ".json")) or any(c.endswith(".py") for c in cli.conf_file):
        print(f"deepy.py: the script comes first, then the config files: python deepy.py train.py CONFIG.yml ... "
              f"(got {shlex.join([cli.user_script, *cli.conf_file])})", file=sys.stderr)
        return 2
    if not os.path.isfile(cli.user_script):
        print(f"deepy.py: script {cli.user_script!r} not found (paths are relative to {os.getcwd()})", file=sys.stderr)
        return 2
    problem = check_script_args(cli.user_script, configs, cli.script_args)
    if problem:
        print(f"deepy.py: {problem}", file=sys.stderr)
        return 2
    import torch

    try:
        args = NeoXArgs.from_files(configs)
        task = task_for_script(cli.user_script)
        if task is not None:
            args.validate_for(task)
        cuda = torch.cuda.is_available()
        plan = plan_launch(args, cli.user_script, configs, cuda_available=cuda, environ=os.environ, repo_root=REPO_ROOT,
                           script_args=cli.script_args)
        world = expected_world_size(args, cuda_available=cuda, device_count=torch.cuda.device_count() if cuda else 0, environ=os.environ)
        if task == "train" and world is not None:
            args.training.batch_sizes(args.parallel.data_parallel_size(world))
    except ConfigError as exc:
        print(f"deepy.py: {exc}", file=sys.stderr)
        return 2
    for notice in plan.notices:
        print(f"deepy.py notice: {notice}", flush=True)
    return run(plan)


if __name__ == "__main__":
    sys.exit(main())
