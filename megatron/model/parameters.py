"""Parameter counting (works on the meta device, so large configurations cost nothing)."""
from __future__ import annotations

from torch import nn


def count_parameters(model: nn.Module, *, exclude_embeddings: bool = False) -> int:
    """Number of distinct parameters (a tied weight counts once).

    exclude_embeddings leaves out the token and position tables and an untied output layer, the
    "non-embedding" count of scaling-law papers.
    """
    skip: set[int] = set()
    if exclude_embeddings:
        for name in ("embedding", "output_layer"):
            sub = getattr(model, name, None)
            if sub is not None:
                skip.update(id(p) for p in sub.parameters())
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) in seen or id(p) in skip:
            continue
        seen.add(id(p))
        total += p.numel()
    return total
