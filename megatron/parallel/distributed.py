"""Process-group setup: the one place that knows how this process was launched.

Launched by deepy.py, torchrun or DeepSpeed's runner, the usual RANK / WORLD_SIZE /
LOCAL_RANK / MASTER_ADDR / MASTER_PORT variables are set; a plain `python train.py` gets a
one-process group on a free local port.
"""
from __future__ import annotations

import logging
import os
import socket
import sys
import time
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


def free_port() -> int:
    """A local TCP port that nothing listens on now (for a one-host process group)."""
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
                              MASTER_PORT=os.environ.get("MASTER_PORT", str(free_port())))
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and os.environ.get("RANK", "0") != "0":
        wait_for_master(os.environ.get("MASTER_ADDR", "127.0.0.1"), int(os.environ.get("MASTER_PORT", "29500")),
                        rank=int(os.environ["RANK"]),
                        timeout_s=float(os.environ.get("SEPLLM_MASTER_TIMEOUT", MASTER_TIMEOUT_S)))
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


MASTER_TIMEOUT_S = 300.0  # rank 0 may still be importing; SEPLLM_MASTER_TIMEOUT overrides it


def wait_for_master(addr: str, port: int, *, rank: int, timeout_s: float = MASTER_TIMEOUT_S) -> None:
    """Return once MASTER_ADDR:MASTER_PORT accepts TCP connections; raise a clear error after `timeout_s`.

    torch.distributed would otherwise retry silently for its 30-minute store timeout when a rank
    cannot reach rank 0 (wrong MASTER_ADDR, a firewall, a hostfile naming the wrong interface).
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((addr, port), timeout=min(5.0, max(timeout_s, 0.1))):
                return
        except OSError as exc:
            if time.monotonic() >= deadline:
                raise RuntimeError(
                    f"rank {rank} cannot reach the master at {addr}:{port} ({exc}) after {timeout_s:.0f} s. "
                    "Check that MASTER_ADDR names an address of the first host that this host can reach "
                    "(hostfile / --master_addr), that port MASTER_PORT is open between the hosts, and that "
                    "rank 0 started; SEPLLM_MASTER_TIMEOUT sets how long to wait"
                ) from exc
        time.sleep(0.5)


def barrier() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


def shutdown_distributed() -> None:
    """Leave the process group together: every rank waits for the others, then tears it down.

    A rank that exits while its process group is still alive can abort at interpreter shutdown
    (gloo: "terminate called without an active exception") when the other ranks close their
    connections first; the run then fails after it finished.
    """
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def end_process(code: int = 0) -> None:
    """Leave the process group together, flush what was printed and logged, and exit without interpreter finalization.

    DeepSpeed and megatron-core keep references to their gloo process groups after destroy_process_group,
    so the groups' worker threads are torn down while the interpreter finalizes. A worker that then drops
    a tensor needs the GIL, the finalizing interpreter ends that thread instead, and the C++ runtime aborts
    ("terminate called without an active exception"): a finished run exits with SIGABRT (seen in CI after
    the barrier above was added). Only a finished process calls this: its checkpoints are written and
    fsynced and its loggers closed, so finalization has nothing left to do that matters.
    """
    shutdown_distributed()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of the default process group; (0, 1) without one."""
    if torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def all_gather_objects(obj) -> list:
    """Every rank's `obj`, in rank order, on every rank (collective; [obj] without a process group)."""
    rank, world = rank_and_world()
    if world == 1:
        return [obj]
    out = [None] * world
    torch.distributed.all_gather_object(out, obj)
    return out
