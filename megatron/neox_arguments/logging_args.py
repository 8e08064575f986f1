"""LoggingArgs: console, TensorBoard and Weights & Biases logging (group `logging`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from megatron.neox_arguments.field import arg


@dataclass
class LoggingArgs:
    """Logging (group `logging`)."""

    log_interval: int = arg(100, "Iterations between two training-log lines.")
    steps_per_print: int = arg(10, "Iterations between two DeepSpeed progress prints.")
    wall_clock_breakdown: bool = arg(False, "Time forward, backward and optimizer step separately (DeepSpeed).")
    log_dir: Optional[str] = arg(None, "Directory for text logs.")
    tensorboard_dir: Optional[str] = arg(None, "Directory for TensorBoard event files; None disables TensorBoard.")
    use_wandb: Optional[bool] = arg(None, "Log to Weights & Biases (rank 0); None or false: off. True without wandb installed: off, with a notice.")
    wandb_project: str = arg("neox", "Weights & Biases project.")
    wandb_group: Optional[str] = arg(None, "Weights & Biases group that collects the runs of one job.")
    wandb_team: Optional[str] = arg(None, "Weights & Biases team (entity).")
    wandb_host: str = arg("https://api.wandb.ai", "Weights & Biases server.")
    wandb_init_all_ranks: bool = arg(False, "Start a Weights & Biases run on every rank, not only on rank 0.")
    log_grad_norm: bool = arg(False, "Log the gradient norm of each parameter.")
    log_param_norm: bool = arg(False, "Log the norm of each parameter.")
    log_grad_pct_zeros: bool = arg(False, "Log the fraction of zero gradient entries of each parameter.")
    log_optimizer_states: bool = arg(False, "Log the norms of the optimizer states.")
