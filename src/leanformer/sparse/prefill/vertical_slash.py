"""Vertical-Slash sparse prefill (MInference).

From the last ``window`` queries (softmax over all keys, causal inside the window) MInference scores every key column
(*vertical*: column sums) and every diagonal (*slash*: sums along ``key = query - o``), then keeps the top vertical
columns and the top slash diagonals, always with the first ``sinks`` columns and the last ``local`` diagonals.
*MInference 1.0: Accelerating Pre-filling for Long-Context LLMs via Dynamic Sparse Attention* (Jiang et al., 2024);
defaults from *The Sparse Frontier* (Nawrot et al., 2025): 512 vertical, 512 slash, last 256 queries, 4 sink columns,
64 local diagonals.

Computed pattern: columns exactly; each kept diagonal on the ``block_size`` tiles it crosses (block diagonals
``floor(o / bs)`` and ``ceil(o / bs)``), as MInference's kernel computes slashes in whole tiles. The reported sparsity
counts what is computed. Asked for ``sparsity`` s, the per-head budget ``(1 - s) T (T + 1) / 2`` pairs is spent on
slashes first (up to ``slash_share`` of it, in score order, counting the tiles each newly covers), then on vertical
columns in score order, each costing the rows it adds; at s = 0 everything fits and the result is dense.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from leanformer.sparse.base import (
    PrefillMethod,
    causal_pairs,
    check_qkv,
    check_sparsity,
    default_scale,
    info_dict,
    pick_impl,
)
from leanformer.sparse.kernels import TilePattern, column_cost, from_diagonals, run_pattern
from leanformer.sparse.prefill.estimate import diagonal_cost, select_by_cost, slash_to_diagonals, vs_scores


@dataclass(kw_only=True, slots=True)
class VerticalSlashParams:
    vertical_size: int = 512
    slash_size: int = 512
    window: int = 256
    sinks: int = 4
    local: int = 64
    block_size: int = 128
    slash_share: float = 0.5
    impl: str = "auto"


def _rank(priority: torch.Tensor) -> torch.Tensor:
    order = torch.argsort(priority, dim=-1, stable=True)
    ranks = torch.arange(order.shape[-1], device=order.device).expand_as(order)
    return torch.empty_like(order).scatter_(-1, order, ranks)


def vs_pattern(vert, slash, seq_len: int, block_size: int, sinks: int, local: int, *, budget=None,
               n_vertical=None, n_slash=None, slash_share: float = 0.5) -> TilePattern:
    """Pattern from vertical/slash scores ``[B, H, T]``.

    Either counts (``n_vertical``, ``n_slash``: int or ``[B, H]``, not counting the forced sinks/local lines) or a
    pair ``budget [B, H]``. Forced: columns ``< sinks`` and diagonals ``< local``."""
    t, bs = seq_len, block_size
    n = -(-t // bs)
    dev = vert.device
    o = torch.arange(t, device=dev)
    s_pri = torch.where(o < local, float("-inf"), -slash)
    v_pri = torch.where(o < sinks, float("-inf"), -vert)
    s_rank = _rank(s_pri)
    first = slash_to_diagonals(s_rank, bs, n)  # rank of the first kept slash touching each block diagonal
    if budget is None:
        n_s = torch.as_tensor(n_slash, device=dev).expand(vert.shape[:2]) + min(local, t)
        bdiag = first < n_s[..., None]
    else:
        d_pri = torch.where(first < min(local, t), float("-inf"), first)
        cost = diagonal_cost(n, bs, t, dev)
        bdiag = select_by_cost(d_pri, cost.expand_as(d_pri), budget * slash_share)
    bdiag[..., 0] = True
    if budget is None:
        n_v = torch.as_tensor(n_vertical, device=dev).expand(vert.shape[:2]) + min(sinks, t)
        colmask = _rank(v_pri) < n_v[..., None]
    else:
        spent = (bdiag.double() * diagonal_cost(n, bs, t, dev)).sum(-1)
        cost = column_cost(bdiag, o.expand(vert.shape), bs, t)
        colmask = select_by_cost(v_pri, cost, budget - spent)
    return from_diagonals(bdiag, colmask, bs, t)


class VerticalSlash(PrefillMethod):
    """``q [B, H_q, T, D]``, ``k, v [B, H_kv, T, D]`` -> ``([B, H_q, T, D], info)``; causal; per query head."""

    name = "vertical_slash"
    Params = VerticalSlashParams

    def __call__(self, q, k, v, sparsity=None, scale=None):
        _, t = check_qkv(q, k, v)
        requested = check_sparsity(sparsity)
        p = self.params
        impl = pick_impl(p.impl, q, ("triton",))
        scale = default_scale(q, scale)
        b, h = q.shape[:2]
        vert, slash, _ = vs_scores(q, k, p.window, scale)
        total = causal_pairs(t)
        budget = None if requested is None else torch.full((b, h), (1 - requested) * total, device=q.device)
        pattern = vs_pattern(vert, slash, t, p.block_size, p.sinks, p.local, budget=budget,
                             n_vertical=p.vertical_size, n_slash=p.slash_size, slash_share=p.slash_share)
        out = run_pattern(q, k, v, pattern, scale, impl)
        kept = pattern.kept_pairs()
        w = min(p.window, t)
        return out, info_dict(self.name, requested, kept.sum(), total * b * h, b * h * w * t, impl,
                              per_head_sparsity=1 - kept / total, pattern=pattern)
