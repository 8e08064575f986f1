"""Which cached entries each new query sees, and which survive: the cache policy as tensors.

The cache is described per slot (one column of the [B, H, N, D] key/value tensors) by a
`SlotLayout`. Rows of a batch are independent streams: each row compresses on its own when it
holds more than c real entries, so rows may keep different numbers of separators. Rows are
right-aligned; the unused slots on the left (and left padding of a prompt) are `valid=False`.

`plan_chunk` feeds q new tokens at once and reproduces token-by-token semantics exactly (as
upstream Streaming-SepLLM): token t is appended, attends to every entry then held (at most
c + 1), and the cache is compressed right after it when it holds more than c entries. Since
the whole chunk runs in one forward pass, each query's visible set is returned as a mask over
the union of the old slots and the chunk; the compression is applied once after the forward.
Compression events are simulated on boolean "alive" flags, one loop iteration per event (a
SepLLM cache compresses every >= c - a - s - w tokens); StreamingLLM, which evicts on every
token, has a closed form. A one-token chunk (decoding) takes a shorter path to the same plan
(`_plan_token`); neither path reads a value back to the host unless some row may compress
(N + q > c), since that is when the layout's width depends on the data.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from megatron.sepllm.cache.budget import STREAMINGLLM, CacheBudget


@dataclass
class SlotLayout:
    """Per-slot metadata of a cache, shared by all layers ([B, N] tensors)."""

    valid: torch.Tensor  # slot holds a real token
    is_sep: torch.Tensor  # token is a separator
    is_init: torch.Tensor  # token is one of the first init_size real tokens of its row
    orig: torch.Tensor  # position of the token in its row's stream (real tokens counted)
    key_pos: torch.Tensor  # rotary position each slot's key has when attended (cache or stream position)
    seen: torch.Tensor  # [B] real tokens seen per row
    columns: int = 0  # input columns fed so far, padding included (HF's "sequence length")

    @classmethod
    def empty(cls, batch: int, device: torch.device | str) -> "SlotLayout":
        z = torch.zeros(batch, 0, dtype=torch.bool, device=device)
        zl = torch.zeros(batch, 0, dtype=torch.long, device=device)
        return cls(z, z.clone(), z.clone(), zl, zl.clone(), torch.zeros(batch, dtype=torch.long, device=device), 0)

    @property
    def batch(self) -> int:
        return self.valid.shape[0]

    @property
    def width(self) -> int:
        return self.valid.shape[1]

    def kept_positions(self, row: int = 0) -> list[int]:
        """Stream positions of the tokens row `row` holds."""
        return self.orig[row][self.valid[row]].tolist()

    def kv_ratio(self) -> float:
        """Held entries over tokens seen, averaged over rows (1.0 before any eviction)."""
        if self.batch == 0:
            return 1.0
        return float((self.valid.long().sum(1).float() / self.seen.float().clamp(min=1)).mean())

    def select(self, index: torch.Tensor) -> "SlotLayout":
        """Rows `index` of the batch (beam reordering, repeat_interleave)."""
        index = index.to(self.valid.device)
        return SlotLayout(self.valid[index], self.is_sep[index], self.is_init[index], self.orig[index],
                          self.key_pos[index], self.seen[index], self.columns)


@dataclass
class ChunkPlan:
    """Everything a forward pass over one chunk needs, and the layout after it."""

    visible: torch.Tensor  # [B, q, U] bool: query t sees union slot u (U = N + q)
    new_positions: torch.Tensor  # [B, q] rotary positions of the new tokens
    union_pos: torch.Tensor  # [B, U] rotary position of every union slot during this chunk
    gather: Optional[torch.Tensor]  # [B, W] union columns kept after the chunk; None: keep all U
    key_delta: Optional[torch.Tensor]  # [B, W] position change of the kept keys (position shifting)
    next_layout: SlotLayout


def compress_rows(alive: torch.Tensor, is_sep: torch.Tensor, is_init: torch.Tensor, budget: CacheBudget) -> torch.Tensor:
    """The upstream compression of every row of `alive` [B, U]: keep the initial entries, the last
    local_size entries and the last sep_size separators among the rest."""
    after = _count_after(alive)
    local = alive & (after < budget.local_size)
    middle_seps = alive & is_sep & ~is_init & ~local
    sep_kept = middle_seps & (_count_after(middle_seps) < budget.sep_size)
    return (alive & is_init) | local | sep_kept


def _count_after(flags: torch.Tensor) -> torch.Tensor:
    """For each column, how many True flags lie strictly to its right in its row."""
    c = flags.long().flip(1).cumsum(1).flip(1)
    return c - flags.long()


def _new_slot_flags(layout: SlotLayout, ids: torch.Tensor, valid: torch.Tensor, budget: CacheBudget,
                    separator_ids: torch.Tensor):
    rank = layout.seen[:, None] + valid.long().cumsum(1) - 1  # stream position of each real token
    is_sep = valid & torch.isin(ids, separator_ids) if separator_ids.numel() else torch.zeros_like(valid)
    is_init = valid & (rank < budget.init_size)
    return rank, is_sep, is_init


def plan_chunk(
    layout: SlotLayout,
    ids: torch.Tensor,  # [B, q]
    valid: Optional[torch.Tensor],  # [B, q] bool; None = all real
    budget: CacheBudget,
    separator_ids: torch.Tensor,
    *,
    pos_shift: bool,
) -> ChunkPlan:
    B, q = ids.shape
    device = ids.device
    if B != layout.batch:
        raise ValueError(f"batch size changed from {layout.batch} to {B} within one cache; reset the cache or start a new one")
    valid = torch.ones(B, q, dtype=torch.bool, device=device) if valid is None else valid.to(device=device, dtype=torch.bool)
    if q == 1 and budget.policy != STREAMINGLLM:
        return _plan_token(layout, ids, valid, budget, separator_ids, pos_shift=pos_shift)
    return _plan_events(layout, ids, valid, budget, separator_ids, pos_shift=pos_shift)


def _plan_events(layout: SlotLayout, ids: torch.Tensor, valid: torch.Tensor, budget: CacheBudget,
                 separator_ids: torch.Tensor, *, pos_shift: bool) -> ChunkPlan:
    """plan_chunk for any chunk: the event walk (SepLLM) or the closed form (StreamingLLM)."""
    return _plan(layout, ids, valid, budget, separator_ids, pos_shift, _walk_events)


def _plan_token(layout: SlotLayout, ids: torch.Tensor, valid: torch.Tensor, budget: CacheBudget,
                separator_ids: torch.Tensor, *, pos_shift: bool) -> ChunkPlan:
    """plan_chunk for one token per row (decoding) under the SepLLM policy: the same plan with a third of
    the operations, and no host synchronisation unless the cache may compress (N + 1 > c)."""
    return _plan(layout, ids, valid, budget, separator_ids, pos_shift, _one_token)


def _plan(layout: SlotLayout, ids: torch.Tensor, valid: torch.Tensor, budget: CacheBudget, separator_ids: torch.Tensor,
          pos_shift: bool, visibility) -> ChunkPlan:
    """The chunk's plan; `visibility(layout, valid, sep_u, init_u, budget)` gives what each query sees
    [B, q, N + q] and which union columns survive the chunk [B, N + q]."""
    q = ids.shape[1]
    rank, new_sep, new_init = _new_slot_flags(layout, ids, valid, budget, separator_ids)
    sep_u = torch.cat([layout.is_sep, new_sep], 1)
    init_u = torch.cat([layout.is_init, new_init], 1)
    visible, alive = visibility(layout, valid, sep_u, init_u, budget)
    if pos_shift:
        # Position inside the cache: the old entries sit at 0..n-1 and the chunk follows them.
        new_pos = layout.valid.long().sum(1)[:, None] + valid.long().cumsum(1) - 1
    else:
        new_pos = rank
    new_pos = torch.where(valid, new_pos, torch.zeros_like(new_pos))
    union_pos = torch.cat([layout.key_pos, new_pos], 1)
    orig_u = torch.cat([layout.orig, rank], 1)
    seen = layout.seen + valid.long().sum(1)
    return _finish_plan(layout, q, budget, visible, alive, sep_u, init_u, orig_u, new_pos, union_pos, seen, pos_shift)


def _walk_events(layout: SlotLayout, valid: torch.Tensor, sep_u, init_u, budget: CacheBudget):
    B, q = valid.shape
    N, device = layout.width, valid.device
    if budget.policy == STREAMINGLLM:
        visible, alive = _streaming_closed_form(layout.valid, valid, init_u, budget)
    else:
        visible, alive = _simulate_events(layout.valid, valid, sep_u, init_u, budget)
    # A padding query sees only itself, so that its softmax stays finite.
    eye = torch.zeros(B, q, N + q, dtype=torch.bool, device=device)
    eye[:, torch.arange(q, device=device), N + torch.arange(q, device=device)] = True
    return torch.where(valid[:, :, None], visible, eye), alive


def _one_token(layout: SlotLayout, valid: torch.Tensor, sep_u, init_u, budget: CacheBudget):
    """The event walk's one step for q = 1: a real token sees every entry held and itself (a padding one
    only itself), and the rows then holding more than c entries are compressed (`compress_rows`)."""
    present = torch.cat([layout.valid, valid], 1)
    visible = torch.cat([layout.valid & valid, torch.ones_like(valid)], 1)[:, None, :]
    if layout.width + 1 <= budget.capacity:
        return visible, present  # no row can hold more than c entries
    over = present.long().sum(1, keepdim=True) > budget.capacity
    return visible, torch.where(over, compress_rows(present, sep_u, init_u, budget), present)


def _finish_plan(layout: SlotLayout, q: int, budget: CacheBudget, visible, alive, sep_u, init_u, orig_u, new_pos,
                 union_pos, seen, pos_shift: bool) -> ChunkPlan:
    """The layout after the chunk: every union column, or (when some row may have compressed) the
    surviving columns right-aligned, which needs the widest row's count on the host."""
    B, U = alive.shape
    columns = layout.columns + q
    if U <= budget.capacity:
        # Nothing can have been evicted (no row holds more than c entries): keep every column.
        nxt = SlotLayout(alive, sep_u, init_u, orig_u, union_pos, seen, columns)
        return ChunkPlan(visible, new_pos, union_pos, None, None, nxt)

    counts = alive.long().sum(1)
    W = int(counts.max()) if B else 0
    # Stable sort puts the dropped columns first and the kept ones, in order, last: right-aligned rows.
    order = torch.sort(alive.to(torch.int8), dim=1, stable=True).indices[:, U - W:]
    kept_valid = alive.gather(1, order)
    kept_pos = union_pos.gather(1, order)
    if pos_shift:
        target = torch.where(kept_valid, kept_valid.long().cumsum(1) - 1, torch.zeros_like(kept_pos))
        delta = target - torch.where(kept_valid, kept_pos, torch.zeros_like(kept_pos))
    else:
        target, delta = kept_pos, None
    nxt = SlotLayout(
        kept_valid, sep_u.gather(1, order) & kept_valid, init_u.gather(1, order) & kept_valid,
        orig_u.gather(1, order), target, seen, columns,
    )
    return ChunkPlan(visible, new_pos, union_pos, order, delta, nxt)


def _streaming_closed_form(old_valid, new_valid, init_u, budget: CacheBudget):
    """StreamingLLM: query t sees the initial entries and the last c + 1 - a other entries up to t."""
    B, N = old_valid.shape
    q = new_valid.shape[1]
    U = N + q
    present = torch.cat([old_valid, new_valid], 1)
    cand = present & ~init_u
    cnt = cand.long().cumsum(1)  # [B, U]
    col = torch.arange(U, device=present.device)
    q_col = N + torch.arange(q, device=present.device)
    upto = col[None, None, :] <= q_col[None, :, None]  # [1, q, U]
    cnt_q = cnt[:, q_col]  # [B, q]
    recent = (cnt_q[:, :, None] - cnt[:, None, :]) < (budget.capacity + 1 - budget.init_size)
    visible = upto & ((present & init_u)[:, None, :] | (cand[:, None, :] & recent))
    last = cnt[:, -1:]
    alive = (present & init_u) | (cand & ((last - cnt) < budget.capacity - budget.init_size))
    return visible, alive


def _simulate_events(old_valid, new_valid, sep_u, init_u, budget: CacheBudget):
    """SepLLM: walk the chunk from one compression event to the next."""
    B, N = old_valid.shape
    q = new_valid.shape[1]
    U = N + q
    device = old_valid.device
    alive = torch.cat([old_valid, torch.zeros_like(new_valid)], 1)
    visible = torch.zeros(B, q, U, dtype=torch.bool, device=device)
    col = torch.arange(U, device=device)
    cum_new = new_valid.long().cumsum(1)
    t0 = 0
    while t0 < q:
        if U <= budget.capacity:
            step = q - t0  # no row can hold more than c entries: no event, and no host synchronisation
        else:
            before = cum_new[:, t0 - 1:t0] if t0 > 0 else torch.zeros(B, 1, dtype=torch.long, device=device)
            count = alive.long().sum(1, keepdim=True) + (cum_new[:, t0:] - before)  # after appending t0..t
            over = count > budget.capacity  # [B, q - t0]
            any_over = over.any(1)
            first = torch.where(any_over, over.int().argmax(1), torch.full_like(any_over, q - t0, dtype=torch.long))
            step = int(first.min())
        t_ev = t0 + step  # the earliest compression in the batch (q if none)
        t1 = min(t_ev, q - 1)
        ts = torch.arange(t0, t1 + 1, device=device)
        new_cols = (col[None, :] >= N + t0) & (col[None, :] <= (N + ts)[:, None])  # [seg, U]
        present_new = torch.cat([torch.zeros_like(old_valid), new_valid], 1)
        visible[:, t0:t1 + 1] = alive[:, None, :] | (new_cols[None] & present_new[:, None, :])
        alive[:, N + t0:N + t1 + 1] = new_valid[:, t0:t1 + 1]
        if t_ev < q:
            rows = over[:, step]
            compressed = compress_rows(alive, sep_u, init_u, budget)
            alive = torch.where(rows[:, None], compressed, alive)
        t0 = t1 + 1
    return visible, alive


def separator_tensor(ids: Sequence[int], device) -> torch.Tensor:
    return torch.as_tensor([int(i) for i in ids], dtype=torch.long, device=device)
