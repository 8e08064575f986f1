"""Running perplexity against tokens read, one curve per method (PNG)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np


def running_ppl(nlls: list[float]) -> np.ndarray:
    """Perplexity of the first n tokens, for every n."""
    arr = np.asarray(nlls, dtype=np.float64)
    return np.exp(np.cumsum(arr) / np.arange(1, len(arr) + 1))


def plot_running_ppl(curves: dict[str, list[float]], path: str | Path, title: str = "Streaming perplexity") -> None:
    """Write a PNG with the running perplexity of each named NLL sequence (x on a log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, nlls in curves.items():
        if not nlls:
            continue
        y = running_ppl(nlls)
        # Thin out long curves, evenly on the log axis: a million points draw slowly and look the same as 4000.
        idx = np.unique(np.geomspace(1, len(y), num=min(len(y), 4000)).astype(np.int64)) - 1
        ax.plot(idx + 1, y[idx], label=f"{name} (ppl {math.exp(float(np.mean(nlls))):.2f})")
    ax.set_xscale("log")
    ax.set_xlabel("tokens read")
    ax.set_ylabel("running perplexity")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = Path(path).with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)
