"""The tile/column pattern: its mask, its pair count, and the selection helpers."""

from __future__ import annotations

import pytest
import torch

from leanformer.sparse.kernels import from_diagonals, from_tiles
from leanformer.sparse.prefill.estimate import select_by_cost, slash_to_diagonals, vs_scores


@pytest.mark.parametrize("t,bs", [(67, 8), (64, 16), (33, 4), (5, 8), (129, 32)])
def test_kept_pairs_counts_the_mask(t, bs):
    g = torch.Generator().manual_seed(42)
    n = -(-t // bs)
    pat = from_diagonals(torch.rand(2, 3, n, generator=g) < 0.3, torch.rand(2, 3, t, generator=g) < 0.2, bs, t)
    assert torch.equal(pat.to_mask().sum((-1, -2)).double(), pat.kept_pairs())
    pat = from_tiles(torch.rand(2, 3, n, n, generator=g) < 0.3, bs, t)
    assert torch.equal(pat.to_mask().sum((-1, -2)).double(), pat.kept_pairs())


def test_mask_is_causal_and_contains_forced_parts():
    t, bs = 50, 8
    n = -(-t // bs)
    bdiag = torch.zeros(1, 1, n, dtype=torch.bool)
    bdiag[..., 2] = True
    cols = torch.zeros(1, 1, t, dtype=torch.bool)
    cols[..., [0, 30]] = True
    m = from_diagonals(bdiag, cols, bs, t).to_mask()[0, 0]
    assert not m.triu(1).any()
    pos = torch.arange(t)
    assert m[pos, pos].all()  # diagonal block diagonal 0 is always on
    assert m[:, 0].all()
    assert m[30:, 30].all() and not m[:30, 30].any()
    # block diagonal 2: query block 4 (rows 32..39) sees key block 2 (16..23) entirely
    assert m[32:40, 16:24].all()


def test_select_by_cost_keeps_priority_prefix_within_budget():
    pri = torch.tensor([[[3.0, 1.0, float("-inf"), 2.0, 0.0]]])
    cost = torch.tensor([[[1.0, 2.0, 5.0, 1.0, 4.0]]])
    keep = select_by_cost(pri, cost, torch.tensor([[10.0]]))
    # order: forced(2) cost 5, then 0.0 (idx4) cost 4 -> 9, then idx1 cost 2 -> 11 > 10 stops
    assert keep.tolist() == [[[False, False, True, False, True]]]
    keep = select_by_cost(pri, cost, torch.tensor([[1.0]]))
    assert keep.tolist() == [[[False, False, True, False, False]]]  # forced kept even over budget


def test_slash_to_diagonals_first_rank():
    rank = torch.tensor([[[5, 0, 1, 2, 3, 4, 6, 7, 8]]])  # offsets 0..8, block 4
    first = slash_to_diagonals(rank, 4, 3)
    # offset 1 (rank 0) crosses block diagonals 0 and 1; offset 4 (rank 3) only 1; 5 (rank 4) 1 and 2
    assert first.tolist() == [[[0.0, 0.0, 4.0]]]


def test_vs_scores_match_naive_sums():
    g = torch.Generator().manual_seed(42)
    b, hq, hk, t, d, w = 2, 4, 2, 53, 8, 11
    q, k = torch.randn(b, hq, t, d, generator=g), torch.randn(b, hk, t, d, generator=g)
    vert, slash, tail = vs_scores(q, k, w, 0.3, tail=5)
    s = (q[:, :, t - w:] @ k.repeat_interleave(2, 1).transpose(-1, -2)) * 0.3
    pos = torch.arange(t - w, t)
    p = s.masked_fill(torch.arange(t)[None, :] > pos[:, None], float("-inf")).softmax(-1)
    naive_slash = torch.zeros(b, hq, t)
    for r in range(w):
        c = torch.arange(int(pos[r]) + 1)
        naive_slash[..., pos[r] - c] += p[..., r, c]
    torch.testing.assert_close(vert, p.sum(-2) / w)
    torch.testing.assert_close(slash, naive_slash / w)
    torch.testing.assert_close(tail, p[..., -5:, :].mean(-2))
    torch.testing.assert_close(vert.sum(-1), torch.ones(b, hq))
