"""CheckpointArgs: where checkpoints go, when they are written and what is restored (group `checkpoint`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from megatron.neox_arguments.field import arg


@dataclass
class CheckpointArgs:
    """Checkpointing (group `checkpoint`)."""

    save: Optional[str] = arg(None, "Directory to write checkpoints to.")
    load: Optional[str] = arg(None, "Directory to resume or initialise from.")
    checkpoint_factor: Optional[int] = arg(None, "Save every checkpoint_factor iterations (linear scale) or at powers of it (log scale).")
    checkpoint_scale: str = arg("linear", "Spacing of saves: linear (every checkpoint_factor steps) or log (steps 1, f, f^2, ...).", choices=("linear", "log"))
    extra_save_iters: Optional[list[int]] = arg(None, "Additional iterations to save at.")
    keep_last_n_checkpoints: Optional[int] = arg(None, "Delete older checkpoints, keeping this many; None keeps all.")
    finetune: bool = arg(False, "Load only the weights from `load` and start at iteration 0 with fresh optimizer and RNG state.")
    no_save_optim: bool = arg(False, "Do not save the optimizer state.")
    no_save_rng: bool = arg(False, "Do not save the RNG state.")
    no_load_optim: bool = arg(False, "Do not restore the optimizer state.")
    no_load_rng: bool = arg(False, "Do not restore the RNG state.")
    iteration: Optional[int] = arg(None, "Iteration to load from `load`; None takes the latest.")
    checkpoint_validation_with_forward_pass: bool = arg(False, "Store a forward pass with each checkpoint and compare it after loading.")

    def save_iters(self, train_iters: int) -> list[int]:
        """Iterations (< train_iters) at which a checkpoint is written, besides the final one."""
        iters = set(self.extra_save_iters or [])
        if self.checkpoint_factor:
            step = self.checkpoint_factor
            while step < train_iters:
                iters.add(step)
                step = step * self.checkpoint_factor if self.checkpoint_scale == "log" else step + self.checkpoint_factor
        return sorted(i for i in iters if i < train_iters)
