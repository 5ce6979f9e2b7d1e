"""Line selection on the device (``prefill/lines.py``, ``pattern.from_lines``) against the sort-and-rank reference,
FlexPrefill's closed-form budgets and per-row pieces, and hybrid patterns."""

from __future__ import annotations

import pytest
import torch

from leanformer import sparse
from leanformer.sparse.kernels import from_diagonals, from_tiles
from leanformer.sparse.kernels.block_select import block_tiles_rows
from leanformer.sparse.kernels.coverage import coverage_rows
from leanformer.sparse.kernels.pattern import TilePattern, from_lines
from leanformer.sparse.prefill.estimate import select_by_cost
from leanformer.sparse.prefill.flexprefill import block_kept_pairs, coverage_count, water_fill
from leanformer.sparse.prefill.lines import keep_within_budget, rank_lines
from leanformer.sparse.prefill.vertical_slash import lines_kept_pairs, vs_lines, vs_pattern, vs_pattern_reference


def _same(a: TilePattern, r: TilePattern):
    assert torch.equal(a.bdiag, r.bdiag)
    assert torch.equal(a.tile_cnt.int(), r.tile_cnt.int()) and torch.equal(a.col_cnt.int(), r.col_cnt.int())
    assert torch.equal(a.to_mask(), r.to_mask())
    assert torch.equal(a.kept_pairs(), r.kept_pairs())


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("mode", ["native_int", "native_per_head", "budget"])
def test_vs_pattern_selects_what_the_reference_selects(seed, mode):
    g = torch.Generator().manual_seed(seed)
    t = int(torch.randint(5, 260, (1,), generator=g))
    bs, local, sinks = [4, 8, 16][seed % 3], [0, 1, 9, 40][seed % 4], [0, 2, 4][seed % 3]
    vert, slash = torch.rand(2, 3, t, generator=g), torch.rand(2, 3, t, generator=g)
    if seed % 2:  # many equal scores: ties go to the lower index in both
        vert, slash = (vert * 3).round(), (slash * 3).round()
    if mode == "native_int":
        kw = dict(n_vertical=int(torch.randint(0, 20, (1,), generator=g)), n_slash=int(torch.randint(0, 9, (1,),
                                                                                                      generator=g)))
    elif mode == "native_per_head":
        kw = dict(n_vertical=torch.randint(0, 30, (2, 3), generator=g), n_slash=torch.randint(0, 30, (2, 3),
                                                                                               generator=g))
    else:
        frac = 0.05 + 0.9 * torch.rand(2, 3, generator=g, dtype=torch.float64)
        kw = dict(budget=frac * t * (t + 1) / 2, slash_share=float(torch.rand(1, generator=g)))
    fast = vs_pattern(vert, slash, t, bs, sinks, local, **kw)
    _same(fast, vs_pattern_reference(vert, slash, t, bs, sinks, local, **kw))
    assert torch.equal(lines_kept_pairs(*vs_lines(vert, slash, t, bs, sinks, local, **kw), bs, t), fast.kept_pairs())


@pytest.mark.parametrize("t,bs", [(67, 8), (64, 16), (5, 8), (129, 32)])
def test_from_lines_equals_from_diagonals(t, bs):
    g = torch.Generator().manual_seed(t)
    n = -(-t // bs)
    bdiag, cols = torch.rand(2, 3, n, generator=g) < 0.3, torch.rand(2, 3, t, generator=g) < 0.2
    _same(from_lines(bdiag, cols, bs, t), from_diagonals(bdiag, cols, bs, t))
    bound = int(cols.sum(-1).max())
    _same(from_lines(bdiag, cols, bs, t, max_cols=bound), from_diagonals(bdiag, cols, bs, t))


def test_keep_within_budget_equals_select_by_cost():
    g = torch.Generator().manual_seed(0)
    scores = (torch.rand(2, 3, 50, generator=g) * 4).round()
    cost = torch.rand(2, 3, 50, generator=g, dtype=torch.float64) * 10
    budget = torch.rand(2, 3, generator=g, dtype=torch.float64) * 200
    pri = torch.where(torch.arange(50) < 3, float("-inf"), -scores)
    assert torch.equal(keep_within_budget(rank_lines(scores)[1], cost, 3, budget), select_by_cost(pri, cost, budget))


def _water_fill_bisection(need, total, cap, iters=200):
    need = need.double().clamp_min(1.0)
    lo, hi = torch.zeros_like(total, dtype=torch.float64), torch.full_like(total, cap, dtype=torch.float64)
    hi = hi / need.min(-1).values
    for _ in range(iters):
        mid = (lo + hi) / 2
        over = torch.minimum(need * mid[:, None], torch.tensor(cap, dtype=torch.float64)).sum(-1) > total
        hi, lo = torch.where(over, mid, hi), torch.where(over, lo, mid)
    return torch.minimum(need * lo[:, None], torch.tensor(cap, dtype=torch.float64))


def test_water_fill_closed_form_equals_bisection():
    g = torch.Generator().manual_seed(0)
    need = torch.rand(5, 8, generator=g, dtype=torch.float64) * 100
    need[0, :3] = 1e4  # some heads capped
    total = torch.tensor([300.0, 50.0, 700.0, 10.0, 1e6], dtype=torch.float64)  # the last: every head capped
    got = water_fill(need, total, 120.0)
    torch.testing.assert_close(got, _water_fill_bisection(need, total, 120.0), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(got[:4].sum(-1), total[:4], rtol=1e-12, atol=1e-9)
    assert (got[4] == 120.0).all()


def test_water_fill_sums_to_the_total_at_a_long_prompts_cap():
    """At a 100K prompt a head's cap is ~5e9 pairs: ``j * cap`` must be fp64 (an int64 ``j`` times a float made
    fp32, off by hundreds of pairs)."""
    cap = 100_000 * 100_001 / 2
    need = torch.tensor([[1e12, 1e12, 3e9, 2e9, 1e9, 5e8, 1e8, 1.0]], dtype=torch.float64)
    total = torch.tensor([4.1 * cap], dtype=torch.float64)
    got = water_fill(need, total, cap)
    assert got[0, :2].tolist() == [cap, cap]
    assert abs(got.sum().item() - total.item()) < 1e-3


def test_coverage_rows_is_the_coverage_of_the_softmax():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(4, 6, 30, generator=g).masked_fill(torch.rand(4, 6, 30, generator=g) < 0.3, float("-inf"))
    s[..., 0] = 0.0  # every row keeps a finite score
    for alpha in (0.1, 0.65, 0.9):
        assert torch.equal(coverage_rows(s, alpha).long(), coverage_count(torch.softmax(s, -1), alpha))


def test_block_tiles_rows_keep_the_best_off_diagonal_blocks_and_the_diagonal_once():
    g = torch.Generator().manual_seed(1)
    n = 12
    i = torch.arange(n)
    scores = torch.randn(2, 3, n, n, generator=g).masked_fill(i[None, :] > i[:, None], float("-inf"))
    scores[..., i, i] = 100.0  # the diagonal scores highest: it must still come once, last
    k_rows = torch.randint(0, n + 1, (2, 3, n), generator=g)
    tiles, cnt = block_tiles_rows(scores, k_rows)
    assert torch.equal(cnt.long(), torch.minimum(torch.maximum(k_rows, (i + 1).clamp(max=3)), i + 1))
    for b, h, r in [(0, 0, 11), (1, 2, 7), (0, 1, 3)]:
        kept = tiles[b, h, r, :cnt[b, h, r]].tolist()
        assert kept[-1] == r and r not in kept[:-1] and len(set(kept)) == len(kept)
        rest = [j for j in range(r) if j not in kept]
        if rest and len(kept) > 1:
            assert scores[b, h, r, kept[:-1]].min() >= scores[b, h, r, rest].max()
    assert torch.equal(block_kept_pairs(k_rows, 8, 90), from_tiles(_blocks(tiles, cnt, n), 8, 90).kept_pairs())


def _blocks(tiles, cnt, n):
    valid = torch.arange(n) < cnt[..., None]
    blk = torch.zeros(*tiles.shape[:-1], n + 1, dtype=torch.bool)
    return blk.scatter_(-1, torch.where(valid, tiles.long(), n), True)[..., :n]


def test_hybrid_pattern_mask_and_count_follow_each_head():
    g = torch.Generator().manual_seed(2)
    t, bs = 70, 8
    n = -(-t // bs)
    lines = from_lines(torch.rand(1, 3, n, generator=g) < 0.4, torch.rand(1, 3, t, generator=g) < 0.2, bs, t)
    tiled = from_tiles(torch.rand(1, 3, n, n, generator=g) < 0.4, bs, t)
    qa = torch.tensor([[True, False, True]])
    on = qa[..., None]
    hybrid = TilePattern(bs, t, torch.where(on, tiled.tile_cnt, lines.tile_cnt), torch.where(on, t, lines.cols),
                         torch.where(on, 0, lines.col_cnt), lines.bdiag & ~on, diags=lines.diags, tiles=tiled.tiles,
                         diag_last=True, tiled_heads=qa)
    mask = hybrid.to_mask()
    assert torch.equal(mask[:, 1], lines.to_mask()[:, 1]) and torch.equal(mask[:, ::2], tiled.to_mask()[:, ::2])
    assert torch.equal(mask.sum((-1, -2)).double(), hybrid.kept_pairs())


def test_flexprefill_query_aware_blocks_keep_their_count(helpers):
    """A query-aware query block keeps the coverage count of key blocks, its diagonal among them once. The diagonal
    used to be picked among the scored blocks as well (it scores high where queries resemble their keys) and then
    placed again, so such a row kept one block fewer than its count."""
    from leanformer.sparse.prefill.estimate import pooled_block_scores

    _, k, v = helpers.make_qkv(1, 4, 2, 120)
    q = k.repeat_interleave(2, 1) + 0.1 * torch.randn(1, 4, 120, 16, generator=torch.Generator().manual_seed(0))
    params = helpers.SMALL["flexprefill"]
    _, info = sparse.prefill_attention(q, k, v, "flexprefill", None, tau=10.0, **params)
    pat = info["pattern"]
    assert info["query_aware_heads"].all()
    n = pat.n_blocks
    i = torch.arange(n)
    k_rows = coverage_rows(pooled_block_scores(q, k, params["block_size"], 16 ** -0.5), params.get("alpha", 0.65))
    want = torch.minimum(torch.maximum(k_rows.long(), (i + 1).clamp(max=3)), i + 1)
    assert torch.equal(pat.block_mask().sum(-1), want)
    assert torch.equal(pat.to_mask().sum((-1, -2)).double(), pat.kept_pairs())
