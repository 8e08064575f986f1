"""DeepSpeed's launcher, with more environment variables forwarded to the ranks on other nodes.

    python -m megatron.neox_arguments.deepspeed_runner NCCL,WANDB,... RUNNER_ARGS...

DeepSpeed's multi-node backends (pdsh, mpirun, srun) forward only the variables whose names
start with an entry of `runner.EXPORT_ENVS`, a module global; it is extended here, inside the
launcher's own process, because deepy.py runs the launcher as a child to get its exit status.
"""
from __future__ import annotations

import sys


def main(argv: list[str]) -> None:
    prefixes, runner_args = argv[0], argv[1:]
    from deepspeed.launcher import runner

    runner.EXPORT_ENVS.extend(p for p in prefixes.split(",") if p and p not in runner.EXPORT_ENVS)
    runner.main(runner_args)


if __name__ == "__main__":
    main(sys.argv[1:])
