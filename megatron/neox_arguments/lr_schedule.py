"""LRArgs: the learning-rate schedule (group `lr`); the peak rate is optimizer.params.lr."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from megatron.neox_arguments.field import arg


@dataclass
class LRArgs:
    """Learning-rate schedule (group `lr`)."""

    lr_decay_style: str = arg("linear", "Decay after warmup: constant, linear, cosine or exponential.", choices=("constant", "linear", "cosine", "exponential"))
    lr_decay_iters: Optional[int] = arg(None, "Iterations over which the rate decays to min_lr; None means train_iters.")
    min_lr: float = arg(0.0, "Floor of the learning rate.")
    warmup: float = arg(0.01, "Fraction of lr_decay_iters spent warming up linearly from 0 (0.01 = 1%).")
    override_lr_scheduler: bool = arg(False, "On resume, take the schedule settings from this config instead of the checkpoint.")
    use_checkpoint_lr_scheduler: bool = arg(False, "On resume, take the schedule settings from the checkpoint and ignore this config's.")

    def decay_iters(self, train_iters: Optional[int]) -> Optional[int]:
        """Iterations the schedule spans: lr_decay_iters, else train_iters."""
        return self.lr_decay_iters if self.lr_decay_iters is not None else train_iters
