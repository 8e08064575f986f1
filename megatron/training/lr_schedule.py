"""Learning-rate schedule with GPT-NeoX's semantics: warmup fraction, then linear/cosine/exponential/constant decay to min_lr."""
from __future__ import annotations

import math


class AnnealingLR:
    """Sets the lr of every param group of `optimizer` at each `step()`.

    `warmup` is a fraction of `decay_iters` (GPT-NeoX's meaning). State is the step count only,
    so resuming restores the exact lr curve.
    """

    STYLES = ("linear", "cosine", "exponential", "constant")

    def __init__(self, optimizer, *, max_lr: float, min_lr: float, warmup: float, decay_iters: int, style: str):
        if style not in self.STYLES:
            raise ValueError(f"lr_decay_style {style!r} is not one of {self.STYLES}")
        self.optimizer = optimizer
        self.max_lr = float(max_lr)
        self.min_lr = float(min_lr)
        self.decay_iters = max(int(decay_iters), 1)
        self.warmup_iters = int(warmup * self.decay_iters)
        self.style = style
        self.num_steps = 0
        self._apply()

    def lr_at(self, step: int) -> float:
        if self.warmup_iters > 0 and step <= self.warmup_iters:
            return self.max_lr * step / self.warmup_iters
        if self.style == "constant":
            return self.max_lr
        progress = min(max(step - self.warmup_iters, 0) / max(self.decay_iters - self.warmup_iters, 1), 1.0)
        if self.style == "linear":
            lr = self.max_lr - (self.max_lr - self.min_lr) * progress
        elif self.style == "cosine":
            lr = self.min_lr + (self.max_lr - self.min_lr) * 0.5 * (math.cos(math.pi * progress) + 1.0)
        else:  # exponential decay to min_lr at decay_iters
            lr = self.max_lr * (max(self.min_lr, 1e-12) / self.max_lr) ** progress
        return max(lr, self.min_lr)

    def get_lr(self) -> float:
        return self.lr_at(self.num_steps)

    def _apply(self) -> None:
        lr = self.get_lr()
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)

    def step(self, increment: int = 1) -> None:
        self.num_steps += increment
        self._apply()

    def state_dict(self) -> dict:
        return {"num_steps": self.num_steps, "max_lr": self.max_lr, "min_lr": self.min_lr,
                "warmup_iters": self.warmup_iters, "decay_iters": self.decay_iters, "style": self.style}

    def load_state_dict(self, state: dict) -> None:
        # The schedule shape comes from the current config (GPT-NeoX's override_lr_scheduler
        # behaviour is the default); only the position in it is restored.
        self.num_steps = int(state["num_steps"])
        self._apply()
