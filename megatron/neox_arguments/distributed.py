"""Where this process sits in the job, read from the launcher's environment, and which backend to use.

deepy.py (DeepSpeed's launcher), torchrun and a plain `python train.py` all work: the first two
set RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT; without them this is a
single-process job. Ranks started directly by srun or mpirun (launcher: slurm / openmpi /
mvapich) have no RANK, so their SLURM_* or MPI variables are read instead.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping, Optional

from megatron.neox_arguments.launcher import LauncherArgs

DEFAULT_MASTER_ADDR = "127.0.0.1"
DEFAULT_MASTER_PORT = 29500

# (rank, local rank, world size, local world size) variable names per way of starting ranks.
_SCHEMES = {
    "env": ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE"),
    "slurm": ("SLURM_PROCID", "SLURM_LOCALID", "SLURM_NTASKS", "SLURM_NTASKS_PER_NODE"),
    "openmpi": ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_SIZE"),
    "mvapich": ("MV2_COMM_WORLD_RANK", "MV2_COMM_WORLD_LOCAL_RANK", "MV2_COMM_WORLD_SIZE", "MV2_COMM_WORLD_LOCAL_SIZE"),
}


@dataclass(frozen=True)
class DistributedEnv:
    """This process's place in the job."""

    rank: int
    local_rank: int
    world_size: int
    local_world_size: int
    master_addr: str
    master_port: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def as_environ(self) -> dict[str, str]:
        """The torch.distributed env:// variables for this process."""
        return {
            "RANK": str(self.rank), "LOCAL_RANK": str(self.local_rank), "WORLD_SIZE": str(self.world_size),
            "LOCAL_WORLD_SIZE": str(self.local_world_size), "MASTER_ADDR": self.master_addr, "MASTER_PORT": str(self.master_port),
        }


def distributed_env(launcher: Optional[LauncherArgs] = None, environ: Optional[Mapping[str, str]] = None) -> DistributedEnv:
    """Rank, sizes and rendezvous address of this process (single process when nothing is set).

    `launcher` says whether ranks may have been started by srun/mpirun directly; `environ`
    defaults to os.environ.
    """
    env = os.environ if environ is None else environ
    scheme = _scheme(launcher, env)
    rank_var, local_var, world_var, local_world_var = _SCHEMES[scheme]
    rank = _int(env, rank_var, 0)
    world = _int(env, world_var, 1)
    local_rank = _int(env, local_var, rank)
    local_world = _local_world(env, local_world_var, world)
    if not 0 <= rank < world:
        raise ValueError(f"{rank_var}={rank} is outside 0..{world - 1} ({world_var}={world}); the launcher set inconsistent variables")
    port = _int(env, "MASTER_PORT", launcher.master_port if launcher else DEFAULT_MASTER_PORT)
    addr = env.get("MASTER_ADDR") or (launcher.master_addr if launcher and launcher.master_addr else DEFAULT_MASTER_ADDR)
    return DistributedEnv(rank, local_rank, world, local_world, addr, port)


def resolve_backend(configured: str, cuda_available: Optional[bool] = None) -> str:
    """The torch.distributed backend to use: `configured`, except nccl becomes gloo without CUDA."""
    if cuda_available is None:
        import torch

        cuda_available = torch.cuda.is_available()
    if configured == "nccl" and not cuda_available:
        return "gloo"
    return configured


def _scheme(launcher: Optional[LauncherArgs], env: Mapping[str, str]) -> str:
    if "RANK" in env or launcher is None:
        return "env"
    if (launcher.deepspeed_slurm or launcher.launcher == "slurm") and "SLURM_PROCID" in env:
        return "slurm"
    if launcher.deepspeed_mpi or launcher.launcher in ("openmpi", "mvapich"):
        for scheme in ("openmpi", "mvapich"):
            if _SCHEMES[scheme][0] in env:
                return scheme
    return "env"


def _local_world(env: Mapping[str, str], name: str, world: int) -> int:
    # SLURM_NTASKS_PER_NODE may read "4(x2)" on heterogeneous allocations; the count comes first.
    value = env.get(name)
    if value is None:
        return world
    try:
        return int(value.split("(")[0])
    except ValueError:
        raise ValueError(f"{name}={value!r} is not an integer") from None


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    value = env.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} must be an integer") from None
