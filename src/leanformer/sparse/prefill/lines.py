"""Choosing vertical lines (key columns) and slash lines (diagonals) from their scores, on the device, with no
host round trip: every shape below is known before the call, so a prefill's pattern is queued behind its
estimation and the attention kernel behind the pattern, and the GPU never waits for the host.

Layout: scores ``[B, H, T]`` fp32 (column ``c`` / diagonal offset ``o = query - key``), counts and budgets
``[B, H]`` (or ints). The *forced* lines are a prefix of indices (sink columns ``c < sinks``, local diagonals
``o < local``); the others rank by score, highest first, equal scores by lower index (a stable sort), exactly as
:func:`leanformer.sparse.prefill.vertical_slash.vs_pattern_reference` ranks them; tests compare the two.

* :func:`rank_lines` - one stable descending sort of the scores, shared by every selection below (FlexPrefill's
  coverage counts read the same sort).
* :func:`keep_top` - the forced lines plus the ``n`` best others.
* :func:`keep_within_budget` - the forced lines, then the others in rank order while their running cost fits.
* :func:`best_offsets` / :func:`diagonals_within_budget` - slash lines are computed on the block diagonals they
  cross (``floor(o / bs)`` and ``ceil(o / bs)``), so a block diagonal ranks as its best crossing offset: a
  reduction over two blocks of offsets per block diagonal and a sort of ``NQB`` entries, not of ``T``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

BIG = 1 << 30


def rank_lines(scores: torch.Tensor):
    """``(values, order)`` of ``scores [..., N]`` sorted highest first, equal scores lowest index first."""
    return torch.sort(scores, dim=-1, descending=True, stable=True)


def _to_positions(keep_sorted: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """A mask over sorted positions back to a mask over line indices (one scatter)."""
    return torch.zeros_like(keep_sorted).scatter_(-1, order, keep_sorted)


def keep_top(order: torch.Tensor, forced: int, n) -> torch.Tensor:
    """Boolean ``[B, H, N]``: the lines ``< forced`` and the ``n`` (int or ``[B, H]``) best of the others."""
    free = order >= forced
    # rank among the non-forced lines at each sorted position; int32, half the bytes of an int64 scan
    rank_free = torch.cumsum(free, -1, dtype=torch.int32) - 1
    if isinstance(n, torch.Tensor):  # a Python int stays one (a tensor made from it would be a host-to-device copy)
        n = n[..., None]
    return _to_positions(~free | (rank_free < n), order)


def keep_within_budget(order: torch.Tensor, cost: torch.Tensor, forced: int, budget: torch.Tensor) -> torch.Tensor:
    """Boolean ``[B, H, N]``: the forced lines, then the others in rank order while the running sum of ``cost``
    (``[B, H, N]`` by line index, forced ones included) stays within ``budget [B, H]``. The same as
    :func:`leanformer.sparse.prefill.estimate.select_by_cost` on priorities that put the forced lines first."""
    c = torch.gather(cost.double().expand(order.shape), -1, order)
    free = order >= forced
    cum = torch.cumsum(torch.where(free, c, 0.0), -1) + torch.where(free, 0.0, c).sum(-1, keepdim=True)
    keep = ~free | (cum <= budget[..., None].double() * (1 + 1e-9) + 0.5)
    return _to_positions(keep, order)


def blocks_any(mask: torch.Tensor, block_size: int, n_blocks: int) -> torch.Tensor:
    """Block diagonal ``d`` is crossed by a kept offset ``o`` when ``floor(o / bs) == d`` or ``ceil(o / bs) == d``:
    ``mask [B, H, T]`` (kept offsets) -> ``[B, H, NQB]``."""
    t = mask.shape[-1]
    m = F.pad(mask, (0, n_blocks * block_size - t)).unflatten(-1, (n_blocks, block_size))
    own = m.any(-1)
    from_below = m[..., 1:].any(-1)  # offsets d bs + 1 .. (d + 1) bs - 1 also cross block diagonal d + 1
    return own | F.pad(from_below[..., :-1], (1, 0))


def best_offsets(slash: torch.Tensor, local: int, block_size: int, n_blocks: int):
    """``(value, offset)`` ``[B, H, NQB]``: the best offset crossing each block diagonal in slash rank order
    (forced local offsets first, as ``-inf``; then the highest score; equal ones the lower offset)."""
    t = slash.shape[-1]
    o = torch.arange(t, device=slash.device)
    pri = torch.where(o < local, float("-inf"), -slash)  # lower is better
    pad = n_blocks * block_size - t
    p = F.pad(pri, (0, pad), value=float("inf")).unflatten(-1, (n_blocks, block_size))
    idx = torch.arange(n_blocks * block_size, device=slash.device).view(n_blocks, block_size)

    def lexmin(vals, ids):  # the lowest value, then the lowest offset among equal ones
        v = vals.amin(-1)
        i = torch.where(vals == v[..., None], ids, BIG).amin(-1)
        return v, i

    va, ia = lexmin(p, idx)  # offsets of block d
    vb, ib = lexmin(p[..., 1:], idx[:, 1:])  # offsets of block d - 1 but its first: they cross d as well
    vb = F.pad(vb[..., :-1], (1, 0), value=float("inf"))
    ib = F.pad(ib[..., :-1], (1, 0), value=BIG)
    below = vb <= va  # equal values: block d - 1's offset is the lower one
    return torch.where(below, vb, va), torch.where(below, ib, ia)


def diagonals_within_budget(value, offset, cost, budget) -> torch.Tensor:
    """Block diagonals in the rank order of their best offsets (``value`` then ``offset``, then the block
    diagonal's own index), kept while their running ``cost`` (``[NQB]``) fits ``budget [B, H]``; those whose best
    offset is forced (``-inf``) are kept regardless. Returns ``[B, H, NQB]`` bool."""
    o1 = torch.argsort(offset, dim=-1, stable=True)
    o2 = torch.argsort(torch.gather(value, -1, o1), dim=-1, stable=True)
    order = torch.gather(o1, -1, o2)
    v = torch.gather(value, -1, order)
    cum = torch.cumsum(torch.gather(cost.double().expand(order.shape), -1, order), -1)
    keep = (cum <= budget[..., None].double() * (1 + 1e-9) + 0.5) | (v == float("-inf"))
    return _to_positions(keep, order)


def coverage_from_sorted(values: torch.Tensor, alpha: float) -> torch.Tensor:
    """Smallest k whose k largest entries hold ``alpha`` of the sum, from ``values`` already sorted highest first
    (:func:`leanformer.sparse.prefill.flexprefill.coverage_count` without its sort)."""
    cum = torch.cumsum(values, -1)
    return (cum < alpha * cum[..., -1:]).sum(-1) + 1
