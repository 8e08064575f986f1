"""The command deepy.py runs: DeepSpeed's launcher arguments and environment for a loaded config.

With CUDA, the launcher keys (hostfile, include, exclude, num_gpus, num_nodes, master_addr,
master_port, launcher, deepspeed_slurm, comment, ...) become DeepSpeed runner flags as in
GPT-NeoX. Without CUDA the ranks run on the CPU: DeepSpeed's own launcher handles that (it
starts `--num_gpus` local processes whatever the device count), so deepy only sets
DS_ACCELERATOR=cpu and leaves the backend choice (gloo) to resolve_backend in each rank.
Every rank receives the config paths, then the script's own options given after them (eval.py's
--eval_tasks ...), and no --local_rank (--no_local_rank: the rank is in LOCAL_RANK).
"""
from __future__ import annotations

import os
import re
import shlex
import sys
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from megatron.neox_arguments.errors import ConfigError
from megatron.neox_arguments.neox_args import NeoXArgs

# Variables forwarded to ranks on other nodes, on top of DeepSpeed's own PYTHON*, UCX*, MV2*,
# MLFLOW* (and NCCL* on CUDA).
EXPORT_PREFIXES = ("NCCL", "WANDB", "MASTER_ADDR", "MASTER_PORT", "GLOO_", "TORCH_", "HF_", "TOKENIZERS_", "DS_ACCELERATOR", "PYTHONPATH")

# Backends that start the script on every rank themselves, so the ranks never see DeepSpeed's
# per-node launcher and need MASTER_ADDR/MASTER_PORT from the environment.
_DIRECT_BACKENDS = ("slurm", "openmpi", "mvapich")

TASK_OF_SCRIPT = {"train.py": "train", "generate.py": "generate", "eval.py": "eval"}


@dataclass
class LaunchPlan:
    """What deepy.py runs: DeepSpeed runner arguments plus the environment they need."""

    runner_args: list[str]
    env: dict[str, str]
    export_prefixes: tuple[str, ...] = EXPORT_PREFIXES
    notices: list[str] = field(default_factory=list)

    def command(self) -> list[str]:
        return [sys.executable, "-m", "megatron.neox_arguments.deepspeed_runner", ",".join(self.export_prefixes), *self.runner_args]


def plan_launch(
    args: NeoXArgs,
    user_script: str,
    config_paths: Sequence[str],
    *,
    cuda_available: bool,
    environ: Mapping[str, str],
    repo_root: str,
    script_args: Sequence[str] = (),
) -> LaunchPlan:
    """The launch of `user_script CONFIG... SCRIPT_ARGS...` on every rank the launcher settings of `args` describe."""
    la = args.launcher
    notices: list[str] = []
    env = {"PYTHONPATH": os.pathsep.join(p for p in (repo_root, environ.get("PYTHONPATH", "")) if p)}
    runner: list[str] = []
    if not cuda_available:
        if task_for_script(user_script) == "train":
            check_training_device(args, cuda_available=False)
        nprocs = la.num_gpus or 1
        ignored = [k for k in ("hostfile", "include", "exclude") if getattr(la, k)] + (["num_nodes"] if la.num_nodes not in (-1, 1) else [])
        if ignored:
            notices.append(f"no CUDA device: running {nprocs} local CPU process(es); {', '.join(ignored)} ignored")
        sep = args.sepllm
        if sep.USE_SEP_ATTN_KERNEL_ACCELERATOR and not sep.USE_ORIGINAL_FULL_ATTEN:
            notices.append("USE_SEP_ATTN_KERNEL_ACCELERATOR is a GPU kernel: on the CPU the SepLLM layers compute the same "
                           "attention with a dense mask instead")
        env["DS_ACCELERATOR"] = "cpu"
        if "OMP_NUM_THREADS" not in environ:
            # Without it every rank starts one thread per core and the ranks fight over the cores.
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // nprocs))
        runner += ["--num_gpus", str(nprocs), "--master_port", str(la.master_port)]
        local = True
    else:
        hostfile = la.hostfile or environ.get("DLTS_HOSTFILE")
        if hostfile:
            _check_hostfile(hostfile, explicit=la.hostfile is not None, num_nodes=la.num_nodes)
            runner += ["--hostfile", hostfile]
        if la.include:
            runner += ["--include", la.include]
        if la.exclude:
            runner += ["--exclude", la.exclude]
        if la.num_nodes != -1:
            runner += ["--num_nodes", str(la.num_nodes)]
        if la.num_gpus is not None:
            if la.include or la.exclude:
                notices.append(f"num_gpus: {la.num_gpus} is dropped because include/exclude choose the GPUs (as in GPT-NeoX)")
            else:
                runner += ["--num_gpus", str(la.num_gpus)]
        master_addr = la.master_addr or environ.get("MASTER_ADDR")
        if master_addr:
            runner += ["--master_addr", master_addr]
        local = not (hostfile or la.include or la.exclude or la.num_nodes not in (-1, 1)
                     or (master_addr and master_addr not in ("localhost", "127.0.0.1")))
        runner += ["--master_port", str(la.master_port)]
        if la.launcher != "pdsh":
            runner += ["--launcher", la.launcher]
        if la.force_multi or la.deepspeed_slurm or la.deepspeed_mpi:
            runner.append("--force_multi")
        if la.no_ssh_check:
            runner.append("--no_ssh_check")
        if la.launcher in _DIRECT_BACKENDS:
            if not master_addr:
                raise ConfigError(
                    f"launcher: {la.launcher} starts every rank directly, so the ranks need the first node's address: "
                    "set master_addr in the config or export MASTER_ADDR (under Slurm: "
                    "export MASTER_ADDR=$(scontrol show hostnames $SLURM_JOB_NODELIST | head -n1))"
                )
            env.update(MASTER_ADDR=master_addr, MASTER_PORT=str(la.master_port))
        srun_args = [f"--comment={la.comment}"] if la.comment else []
        srun_args += [f"--account={la.account}"] if la.account else []
        if srun_args:
            if la.launcher == "slurm":
                runner += ["--launcher_args", shlex.join(srun_args)]
            else:
                notices.append(f"comment/account only apply with launcher: slurm (launcher is {la.launcher}); ignored")
    if local and _port_taken(la.master_port):
        raise ConfigError(f"master_port {la.master_port} is taken on this machine (another run's rendezvous?); set "
                          f"master_port to a free port in the config")
    runner += ["--no_local_rank", user_script, *config_paths, *script_args]
    return LaunchPlan(runner_args=runner, env=env, notices=notices)


def _port_taken(port: int) -> bool:
    """Whether a one-host launch's rendezvous port is already bound here (the ranks would die on EADDRINUSE)."""
    import socket

    with socket.socket() as sock:
        # as torch's rendezvous store does: connections of a finished run (TIME_WAIT) do not block it
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("", port))
        except OSError:
            return True
    return False


def expected_world_size(args: NeoXArgs, *, cuda_available: bool, device_count: int, environ: Mapping[str, str]) -> int | None:
    """How many ranks the launch will start, when the config and machine tell (None when they don't).

    Lets deepy.py check the batch sizes before any process starts. GPT-NeoX's global_num_gpus wins.
    """
    la = args.launcher
    if args.parallel.global_num_gpus:
        launched = (la.num_gpus or 1) if not cuda_available else None
        if launched is not None and launched != args.parallel.global_num_gpus:
            # A resharded checkpoint's config.yml carries the new layout's global_num_gpus.
            raise ConfigError(
                f"global_num_gpus: {args.parallel.global_num_gpus} but this launch starts {launched} CPU process(es) "
                f"(num_gpus: {la.num_gpus}); set num_gpus: {args.parallel.global_num_gpus}, or remove global_num_gpus")
        return args.parallel.global_num_gpus
    if not cuda_available:
        return la.num_gpus or 1
    if la.include or la.exclude:
        return None
    hostfile = la.hostfile or environ.get("DLTS_HOSTFILE")
    if not hostfile:
        return la.num_gpus or device_count or None
    slots = _hostfile_slots(hostfile)
    if not slots:
        return None
    if la.num_nodes > 0:
        slots = slots[: la.num_nodes]
    return sum(la.num_gpus or n for n in slots)


def _hostfile_slots(path: str) -> list[int]:
    """GPUs per host of an MPI-style hostfile (`host slots=N` lines); empty when unreadable."""
    try:
        lines = open(path, encoding="utf-8").read().splitlines()
    except OSError:
        return []
    slots = []
    for line in lines:
        parts = line.split("#", 1)[0].split()
        counts = [p.split("=", 1)[1] for p in parts[1:] if p.startswith("slots=")]
        if parts and counts and counts[0].isdigit():
            slots.append(int(counts[0]))
    return slots


# DeepSpeed's reading of a hostfile line (launcher/runner.py); anything else stops its launcher.
_HOSTFILE_LINE = re.compile(r"^(\S+)\s+slots=(\d+)")


def _check_hostfile(path: str, *, explicit: bool, num_nodes: int) -> None:
    """Refuse a hostfile DeepSpeed's launcher would misread, before it starts anything.

    A missing file makes DeepSpeed run on the local GPUs only, with a warning that is easy to miss;
    a bad line stops it with a traceback. $DLTS_HOSTFILE may name a file that does not exist
    (GPT-NeoX's convention), so only a configured `hostfile` must exist.
    """
    if not os.path.isfile(path):
        if explicit:
            raise ConfigError(f"`hostfile: {path}` does not exist (relative paths start at {os.getcwd()}); "
                              "write one `host slots=N` line per node, or remove hostfile to run on this machine only")
        return
    hosts: dict[str, int] = {}
    for number, raw in enumerate(open(path, encoding="utf-8").read().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _HOSTFILE_LINE.match(line)
        if match is None:
            raise ConfigError(f"hostfile {path}:{number}: {line!r} is not a `host slots=N` line (DeepSpeed's format, e.g. 'worker-0 slots=8')")
        if match.group(1) in hosts:
            raise ConfigError(f"hostfile {path}:{number}: host {match.group(1)!r} is listed twice; keep one line per host")
        hosts[match.group(1)] = int(match.group(2))
    if not hosts:
        raise ConfigError(f"hostfile {path} lists no hosts; write one `host slots=N` line per node")
    if num_nodes > len(hosts):
        raise ConfigError(f"num_nodes: {num_nodes} but hostfile {path} lists {len(hosts)} host(s); add hosts or lower num_nodes")


def check_training_device(args: NeoXArgs, *, cuda_available: bool) -> None:
    """Refuse a training precision the ranks' device cannot run (deepy.py and train.py both ask)."""
    if args.precision.precision == "fp16" and not cuda_available:
        # DeepSpeed refuses fp16 on the CPU only inside deepspeed.initialize, after each rank built its model.
        raise ConfigError(
            "precision: fp16 runs on GPUs only, and no CUDA device is visible here (the ranks would run on the CPU); "
            "for a CPU run add a config with `precision: fp32` and `fp16: {enabled: false}`")


def task_for_script(user_script: str) -> str | None:
    """train / generate / eval for the project's entry scripts, None for any other script."""
    return TASK_OF_SCRIPT.get(os.path.basename(user_script))
