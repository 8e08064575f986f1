"""Brute-force statement of the SepLLM attention rule, one (query, key) pair at a time.

This is the specification that every fast path (dense masks, the Sep-Attention kernel, the
KV caches) is tested against. It is deliberately written as plain Python loops.

Query i may attend to key j when all of these hold:
  * causal: j <= i;
  * same document (only when document ids are given): doc[j] == doc[i];
  * key j is real (not padding), unless j == i;
  * and one of
      - j is inside the local window: i - j < window  (EXCLUDE_DIAGONAL=True, the default),
        or i - j <= window (EXCLUDE_DIAGONAL=False);
      - j is "kept": an initial token (its offset from the start of its row, or of its
        document, or of the first non-padding token, is <= init_tok_max_idx), or a separator
        token (SepLLM), or a FixLLM anchor (offset % interval == interval - 1).
"""
from __future__ import annotations

from typing import Optional, Sequence


def reference_keep_mask(
    input_ids: Sequence[Sequence[int]],
    *,
    mode: str,
    window: int,
    init_tok_max_idx: int,
    separator_ids: Sequence[int] = (),
    fixed_interval: Optional[int] = None,
    exclude_diagonal: bool = True,
    key_valid: Optional[Sequence[Sequence[bool]]] = None,
    doc_ids: Optional[Sequence[Sequence[int]]] = None,
    adaptive_init_padding_id: Optional[int] = None,
) -> list[list[list[bool]]]:
    """Return mask[b][i][j] (True = query i sees key j) for `mode` in full|sepllm|streaming|fixllm."""
    seps = set(separator_ids)
    out = []
    for b, row in enumerate(input_ids):
        L = len(row)
        start = 0
        if adaptive_init_padding_id is not None:
            while start < L and row[start] == adaptive_init_padding_id:
                start += 1
        mask = [[False] * L for _ in range(L)]
        for i in range(L):
            for j in range(i + 1):
                if doc_ids is not None and doc_ids[b][j] != doc_ids[b][i]:
                    continue
                if key_valid is not None and not key_valid[b][j] and j != i:
                    continue
                if mode == "full":
                    mask[i][j] = True
                    continue
                in_window = (i - j < window) if exclude_diagonal else (i - j <= window)
                if doc_ids is not None:
                    offset = j - min(k for k in range(L) if doc_ids[b][k] == doc_ids[b][j])
                else:
                    offset = j - start
                initial = 0 <= offset <= init_tok_max_idx
                kept = initial
                if mode == "sepllm":
                    kept = kept or row[j] in seps
                elif mode == "fixllm":
                    kept = kept or (offset >= 0 and offset % fixed_interval == fixed_interval - 1)
                elif mode != "streaming":
                    raise ValueError(f"unknown mode {mode!r}")
                mask[i][j] = in_window or kept
        out.append(mask)
    return out
