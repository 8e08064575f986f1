"""Process-group setup: the one place that knows how this process was launched.

Launched by deepy.py, torchrun or DeepSpeed's runner, the usual RANK / WORLD_SIZE /
LOCAL_RANK / MASTER_ADDR / MASTER_PORT variables are set; a plain `python train.py` gets a
one-process group on a free local port.
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare_accelerator_env() -> None:
    """Must run before `import deepspeed`: DeepSpeed picks its accelerator at import time."""
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")


def init_distributed(backend: str | None = None, launcher=None) -> DistEnv:
    """Initialise torch.distributed through DeepSpeed (gloo on CPU, NCCL on GPU).

    `launcher` (LauncherArgs) lets ranks started directly by srun or mpirun find their rank
    from SLURM_* / OMPI_* variables.
    """
    prepare_accelerator_env()
    if "RANK" not in os.environ:
        from megatron.neox_arguments.distributed import distributed_env

        found = distributed_env(launcher)
        if found.world_size > 1:
            os.environ.update(found.as_environ())
        else:
            os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                              MASTER_PORT=os.environ.get("MASTER_PORT", str(_free_port())))
    import deepspeed

    cuda = torch.cuda.is_available()
    if backend is None or (backend == "nccl" and not cuda):
        backend = "nccl" if cuda else "gloo"
    if not torch.distributed.is_initialized():
        deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False)
    rank = torch.distributed.get_rank()
    world = torch.distributed.get_world_size()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    return DistEnv(rank, world, local_rank, device)


def barrier() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
