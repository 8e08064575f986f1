"""The pieces of benchmarks/fa4_composition.py that run without FlashAttention-4: the far part's block
classes (against every query-key pair) and the LSE merge kernel (under TRITON_INTERPRET)."""
import math

import pytest
import torch

from benchmarks.fa4_composition import BLOCK, block_classes, merge, pack


@pytest.mark.parametrize("W", [97, 128, 129])  # 128 and 129 put counts exactly on block edges
def test_far_block_classes_match_every_pair(W):
    torch.manual_seed(0)
    B, L = 3, 8 * BLOCK
    kept = torch.rand(B, L) < 0.3
    kept[1] = True  # every key kept: the counts step through every value
    kept[2] = torch.arange(L) % 200 == 0
    counts = torch.zeros(B, L + 1, dtype=torch.int32)
    counts[:, 1:] = kept.cumsum(1)
    cnt = counts.gather(1, (torch.arange(L) - W + 1).clamp(min=0).expand(B, L)).to(torch.int32)
    n_compact = math.ceil(int(counts[:, L].max()) / BLOCK) * BLOCK
    part, full = block_classes(cnt, L, n_compact)
    visible = torch.arange(n_compact)[None, None, :] < cnt[:, :, None]  # [B, L, n_compact]
    tiles = visible.view(B, L // BLOCK, BLOCK, n_compact // BLOCK, BLOCK)
    assert torch.equal(full, tiles.all(dim=4).all(dim=2))
    assert torch.equal(part, tiles.any(dim=4).any(dim=2) & ~full)
    assert full.any() and part.any() and (~part & ~full).any()  # all three classes occur
    counts_, idx = pack(part)
    assert counts_.shape == (B, 1, L // BLOCK) and idx.shape == (B, 1, L // BLOCK, n_compact // BLOCK)
    for b in range(B):
        for r in range(L // BLOCK):
            listed = idx[b, 0, r, : counts_[b, 0, r]].tolist()
            assert listed == torch.nonzero(part[b, r]).flatten().tolist()


def test_merge_weights_band_and_far_by_their_lse():
    torch.manual_seed(1)
    B, L, H, D = 2, 70, 3, 16
    ob, of = torch.randn(B, L, H, D), torch.randn(B, L, H, D)
    lb, lf = torch.randn(B, H, L), torch.randn(B, H, L) + 0.5
    lf[:, :, :10] = float("-inf")  # no far key yet: FlashAttention's LSE is not finite there...
    lf[:, 0, 10:15] = float("inf")
    of[:, :10] = float("nan")  # ...and its output rows may be NaN
    of[:, 10:15, 0] = float("nan")
    out, lse2 = merge(ob, of, lb, lf)
    lf_ = torch.where(torch.isfinite(lf), lf, torch.full_like(lf, float("-inf")))
    lse = torch.logaddexp(lb, lf_)
    ref = (ob * torch.exp(lb - lse).transpose(1, 2)[..., None]
           + torch.nan_to_num(of) * torch.exp(lf_ - lse).transpose(1, 2)[..., None])
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lse2, lse / math.log(2), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out, ob, atol=1e-3)  # the far part did move the rows that have one
