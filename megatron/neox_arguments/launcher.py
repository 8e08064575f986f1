"""LauncherArgs: how deepy.py starts the ranks through DeepSpeed's launcher (group `launcher`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from megatron.neox_arguments.field import arg


@dataclass
class LauncherArgs:
    """DeepSpeed launcher settings (group `launcher`), used by deepy.py."""

    hostfile: Optional[str] = arg(None, "MPI-style hostfile ('worker-0 slots=8' per line); None uses $DLTS_HOSTFILE or the local machine.")
    include: Optional[str] = arg(None, "Hosts/slots to use, NODE[:SLOT[,SLOT]][@NODE...], e.g. 'worker-0@worker-1:0,2'.")
    exclude: Optional[str] = arg(None, "Hosts/slots to leave out (same format as include).")
    num_nodes: int = arg(-1, "Use the first num_nodes hosts of the hostfile; -1 uses all.")
    num_gpus: Optional[int] = arg(None, "Processes per node (GPUs 0..num_gpus-1); None uses all GPUs, or 1 process without CUDA.")
    master_port: int = arg(29500, "TCP port of the rendezvous on the first node.")
    master_addr: Optional[str] = arg(None, "Address of the first node; None lets DeepSpeed find it (or uses $MASTER_ADDR).")
    launcher: str = arg("pdsh", "Multi-node backend: pdsh, openmpi, mvapich or slurm.", choices=("pdsh", "openmpi", "mvapich", "slurm"))
    force_multi: bool = arg(False, "Use the multi-node backend even for one host.")
    no_ssh_check: bool = arg(False, "Skip DeepSpeed's passwordless-ssh check of the first host.")
    deepspeed_slurm: bool = arg(False, "Ranks are started by srun and read RANK/WORLD_SIZE from SLURM_* variables.")
    deepspeed_mpi: bool = arg(False, "Ranks are started by mpirun and read RANK/WORLD_SIZE from the MPI environment.")
    deepspeed_extra_args: Optional[dict[str, Any]] = arg(None, "Extra DeepSpeed config entries (e.g. comms_logger), merged into deepspeed_config().")
    comment: Optional[str] = arg(None, "Job comment passed to srun --comment (launcher: slurm).")
    account: Optional[str] = arg(None, "Account passed to srun --account (launcher: slurm).")
