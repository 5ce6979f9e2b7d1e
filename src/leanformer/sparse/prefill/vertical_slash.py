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
columns in score order, each costing the rows it adds; at s = 0 everything fits and the result is dense. The forced
lines (the first block diagonals, which the local diagonals cross, and the sink columns) are kept whatever the
budget: a request they alone exceed (a short prompt) warns once per method instance with the reachable range.

On a GPU (``impl="auto"``) the scores come from one fused estimation (``kernels/vs_estimate.py``: two Triton launches,
no ``W x T`` tensor), the lines are chosen on the device by one sort of the column scores and reductions over the
diagonal scores (``prefill/lines.py``), and the kernel walks the kept block diagonals and columns
(``kernels/tile_attention.py``); nothing in the call waits for the GPU. ``impl="reference"`` runs the PyTorch
estimate and the same selection.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch

from leanformer.sparse.base import (
    PrefillMethod,
    SparsePrefillParams,
    causal_pairs,
    check_qkv,
    check_sparsity,
    default_scale,
    info_dict,
    pick_impl,
    unreachable_message,
)
from leanformer.sparse.kernels import TilePattern, column_cost, from_diagonals, run_pattern
from leanformer.sparse.kernels.line_pattern import columns_cost, from_lines, kept_pairs, position_costs
from leanformer.sparse.prefill.estimate import (
    diagonal_cost,
    select_by_cost,
    slash_to_diagonals,
    window_scores,
)
from leanformer.sparse.prefill.lines import (
    best_offsets,
    blocks_any,
    diagonals_within_budget,
    keep_top,
    keep_within_budget,
    rank_lines,
)


@dataclass(kw_only=True, slots=True)
class VerticalSlashParams(SparsePrefillParams):
    vertical_size: int = 512
    slash_size: int = 512
    window: int = 256
    sinks: int = 4
    local: int = 64
    block_size: int = 128
    slash_share: float = 0.5
    impl: str = "auto"
    # the tile kernel's launch settings (keys of kernels.tile_attention.DEFAULT_CONFIG) for impl "triton"
    kernel_options: dict | None = None


def _rank(priority: torch.Tensor) -> torch.Tensor:
    order = torch.argsort(priority, dim=-1, stable=True)
    ranks = torch.arange(order.shape[-1], device=order.device).expand_as(order)
    return torch.empty_like(order).scatter_(-1, order, ranks)


def vs_lines(vert, slash, seq_len: int, block_size: int, sinks: int, local: int, *, budget=None,
             n_vertical=None, n_slash=None, slash_share: float = 0.5, v_order=None, s_order=None, impl="auto"):
    """The kept block diagonals ``[B, H, NQB]`` (diagonal 0 on) and columns ``[B, H, T]`` (bool) of
    :func:`vs_pattern`, chosen on the scores' device with no host synchronisation."""
    t, bs = seq_len, block_size
    n = -(-t // bs)
    if v_order is None:
        v_order = rank_lines(vert)[1]
    if budget is None:
        if s_order is None:
            s_order = rank_lines(slash)[1]
        bdiag = blocks_any(keep_top(s_order, local, n_slash), bs, n)
        bdiag[..., 0] = True
        return bdiag, keep_top(v_order, sinks, n_vertical)
    value, offset = best_offsets(slash, local, bs, n)
    dcost = diagonal_cost(n, bs, t, vert.device)
    bdiag = diagonals_within_budget(value, offset, dcost, budget * slash_share)
    bdiag[..., 0] = True
    spent = (bdiag.double() * dcost).sum(-1)
    return bdiag, keep_within_budget(v_order, position_costs(bdiag, bs, t, impl), sinks, budget - spent)


def lines_kept_pairs(bdiag, colmask, block_size: int, seq_len: int, impl: str = "auto"):
    """Pairs ``[B, H]`` (float64) a pattern of these lines computes, without building it."""
    n = bdiag.shape[-1]
    cols = columns_cost(bdiag, colmask, block_size, seq_len, impl)
    return (bdiag.double() * diagonal_cost(n, block_size, seq_len, bdiag.device)).sum(-1) + cols


def vs_pattern(vert, slash, seq_len: int, block_size: int, sinks: int, local: int, *, budget=None,
               n_vertical=None, n_slash=None, slash_share: float = 0.5, v_order=None, s_order=None,
               impl: str = "auto") -> TilePattern:
    """Pattern from vertical/slash scores ``[B, H, T]``, built on their device with no host synchronisation.

    Either counts (``n_vertical``, ``n_slash``: int or ``[B, H]``, not counting the forced sinks/local lines) or a
    pair ``budget [B, H]``. Forced: columns ``< sinks`` and diagonals ``< local``. ``v_order`` / ``s_order``: the
    scores' :func:`leanformer.sparse.prefill.lines.rank_lines` order where the caller has it already. Selects what
    :func:`vs_pattern_reference` selects (tests compare them); the pattern lists lines in fixed-width slots.
    ``impl``: the calling method's (``"reference"``: the bookkeeping in PyTorch on any device)."""
    bdiag, colmask = vs_lines(vert, slash, seq_len, block_size, sinks, local, budget=budget, n_vertical=n_vertical,
                              n_slash=n_slash, slash_share=slash_share, v_order=v_order, s_order=s_order, impl=impl)
    native = budget is None and isinstance(n_vertical, int)
    return from_lines(bdiag, colmask, block_size, seq_len, n_vertical + min(sinks, seq_len) if native else None,
                      impl)


@lru_cache(maxsize=256)
def forced_pairs(seq_len: int, block_size: int, sinks: int, local: int) -> float:
    """Pairs the forced lines compute whatever the budget: block diagonal 0, the block diagonals the ``local``
    diagonals cross, the ``sinks`` columns below them."""
    t, bs = seq_len, block_size
    n = -(-t // bs)
    top = -(-(min(local, t) - 1) // bs) if local > 0 else 0
    bdiag = (torch.arange(n) <= top)[None, None]
    cost = diagonal_cost(n, bs, t)
    sink_cost = column_cost(bdiag, torch.arange(min(sinks, t))[None, None], bs, t).sum()
    return float((cost * bdiag[0, 0]).sum() + sink_cost)


def budget_warning(method: str, requested: float | None, seq_len: int, block_size: int, sinks: int,
                   local: int) -> str | None:
    """The warning for a request the forced lines alone exceed at this length, else None."""
    if not requested:
        return None
    total = causal_pairs(seq_len)
    reach = 1 - forced_pairs(seq_len, block_size, sinks, local) / total
    if requested <= reach + 1e-9:
        return None
    why = (f"the {local} local diagonals are computed on whole {block_size}-token block diagonals and the {sinks} "
           "sink columns are always kept")
    return unreachable_message(method, requested, seq_len, reach, why)


def vs_pattern_reference(vert, slash, seq_len: int, block_size: int, sinks: int, local: int, *, budget=None,
                         n_vertical=None, n_slash=None, slash_share: float = 0.5) -> TilePattern:
    """:func:`vs_pattern` by ranks and priority sorts (reads two widths back to the host)."""
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
        warning = budget_warning(self.name, requested, t, p.block_size, p.sinks, p.local)
        if warning:
            self.warn_once(warning)
        vert, slash, _ = window_scores(q, k, p.window, scale, impl=impl)
        total = causal_pairs(t)
        budget = (None if requested is None
                  else torch.full((b, h), (1 - requested) * total, device=q.device, dtype=torch.float64))
        pattern = vs_pattern(vert, slash, t, p.block_size, p.sinks, p.local, budget=budget,
                             n_vertical=p.vertical_size, n_slash=p.slash_size, slash_share=p.slash_share, impl=impl)
        out = run_pattern(q, k, v, pattern, scale, impl, kernel_options=p.kernel_options)
        kept = kept_pairs(pattern, impl)
        w = min(p.window, t)
        return out, info_dict(self.name, requested, kept.sum(), total * b * h, b * h * w * t, impl,
                              per_head_sparsity=1 - kept / total, pattern=pattern)
