"""Training metrics to the console (a progress bar on a terminal), TensorBoard and wandb. Rank 0 only."""
from __future__ import annotations

import os
import sys
from typing import Optional


class MetricsLogger:
    def __init__(self, *, total_iters: int, start_iter: int, tensorboard_dir: Optional[str] = None,
                 use_wandb: bool = False, wandb_project: Optional[str] = None, wandb_group: Optional[str] = None,
                 wandb_team: Optional[str] = None, wandb_host: Optional[str] = None, config: Optional[dict] = None,
                 enabled: bool = True):
        self.enabled = enabled
        self.tb = None
        self.wandb = None
        self.bar = None
        if not enabled:
            return
        if tensorboard_dir:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(log_dir=tensorboard_dir)
        if use_wandb:
            self.wandb = _start_wandb(wandb_project, wandb_group, wandb_team, wandb_host, config)
        if sys.stdout.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total_iters, initial=start_iter, dynamic_ncols=True, unit="it")

    def log(self, iteration: int, metrics: dict[str, float], prefix: str = "train") -> None:
        if not self.enabled:
            return
        for key, value in metrics.items():
            if self.tb is not None:
                self.tb.add_scalar(f"{prefix}/{key}", value, iteration)
        if self.wandb is not None:
            self.wandb.log({f"{prefix}/{k}": v for k, v in metrics.items()}, step=iteration)
        text = " | ".join(f"{k} {_fmt(v)}" for k, v in metrics.items())
        line = f"[{prefix}] iter {iteration} | {text}"
        if self.bar is not None:
            self.bar.write(line)
        else:
            print(line, flush=True)

    def advance(self, n: int = 1, postfix: Optional[dict] = None) -> None:
        if self.bar is not None:
            self.bar.update(n)
            if postfix:
                self.bar.set_postfix({k: _fmt(v) for k, v in postfix.items()}, refresh=False)

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.flush()
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


def _fmt(v: float) -> str:
    if isinstance(v, int):
        return str(v)
    a = abs(v)
    if a != 0 and (a < 1e-3 or a >= 1e5):
        return f"{v:.4e}"
    return f"{v:.4f}"


def _start_wandb(project, group, team, host, config):
    """A Weights & Biases run, or None when wandb is not installed (as GPT-NeoX: a config written for
    a machine with wandb still trains here; validation gave a notice already)."""
    try:
        import wandb
    except ImportError:
        print("use_wandb is true but wandb is not installed: Weights & Biases logging is off "
              "(pip install wandb to turn it on)", flush=True)
        return None
    if host:
        os.environ.setdefault("WANDB_BASE_URL", host)
    # Offline mode (WANDB_MODE=offline) needs no network and no API key.
    return wandb.init(project=project or "sepllm", group=group, entity=team, config=config or {}, reinit=True)
