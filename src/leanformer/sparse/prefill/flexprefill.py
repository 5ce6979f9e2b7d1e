"""FlexPrefill: context-aware sparse prefill with a per-head, per-input budget.

Each head keeps the smallest set of vertical columns and of slash diagonals whose estimated attention mass (from the
last ``window`` queries) reaches ``alpha``, floored at ``min_budget`` lines. Heads whose pooled block estimate agrees
with the true block distribution of the last queries (square-root Jensen-Shannon divergence below ``tau``) switch to
a *query-aware* block pattern: each query block keeps the fewest key blocks whose pooled-score softmax mass reaches
``alpha``. *FlexPrefill: A Context-Aware Sparse Attention Mechanism for Efficient Long-Sequence Inference*
(Lai et al., ICLR 2025). Defaults from *The Sparse Frontier* (Nawrot et al., 2025): alpha 0.65, last 512 queries,
min budget 512 (its version keeps only the vertical-slash branch: ``query_aware=False``); tau 0.1 from the original.

Asked for ``sparsity`` s, the total budget ``(1 - s) H T (T + 1) / 2`` pairs is shared across heads in proportion to
what each head's coverage rule asks for (water-filling, capped at a full head), so the adaptivity across heads is
kept while the total matches the request; at s = 0 every head is dense.

On a GPU (``impl="auto"``) nothing in a call waits for the GPU: the window scores (and the query-aware test's last
rows) come from one fused estimation (``kernels/vs_estimate.py``), both score lines are ranked by one sort that also
gives the coverage counts, the lines are chosen on the device (``prefill/lines.py``), the query-aware rows' coverage
and their tiles come from one Triton launch each (``kernels/coverage.py``, ``kernels/block_select.py``), the budget
is water-filled in closed form (one launch, ``kernels/budget.py``), and one kernel launch runs the per-head mix of
tiles and lines (``kernels/tile_attention.py``, a hybrid pattern). Query-aware blocks never pick a query block's own
diagonal among their scored blocks (it is placed once, last).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from leanformer.sparse.base import (
    PrefillMethod,
    SparsePrefillParams,
    causal_pairs,
    check_qkv,
    check_sparsity,
    default_scale,
    defer_warning,
    info_dict,
    pick_impl,
    unreachable_message,
)
from leanformer.sparse.kernels import TilePattern, run_pattern
from leanformer.sparse.kernels.block_select import block_tiles_rows, select_row_tiles
from leanformer.sparse.kernels.budget import water_fill
from leanformer.sparse.kernels.coverage import coverage, coverage_rows
from leanformer.sparse.kernels.divergence import block_distance
from leanformer.sparse.kernels.line_pattern import from_lines, kept_pairs
from leanformer.sparse.kernels.pattern import _tile_weights
from leanformer.sparse.prefill.block_topk import floor_pairs, k_for_budget
from leanformer.sparse.prefill.estimate import pooled_block_scores, window_scores
from leanformer.sparse.prefill.lines import coverage_from_sorted, rank_lines
from leanformer.sparse.prefill.vertical_slash import forced_pairs, lines_kept_pairs, vs_lines


@dataclass(kw_only=True, slots=True)
class FlexPrefillParams(SparsePrefillParams):
    alpha: float = 0.65
    tau: float = 0.1
    window: int = 512
    min_budget: int = 512
    sinks: int = 4
    local: int = 64
    block_size: int = 128
    query_aware: bool = True
    impl: str = "auto"
    # the tile kernel's launch settings (keys of kernels.tile_attention.DEFAULT_CONFIG), impl "triton", over
    # KERNEL_DEFAULTS
    kernel_options: dict | None = None


# Every column step masked (COL_MASK=1): FlexPrefill's tiles ran faster in the launch built so, 12.8-13.9 against
# 14.5-14.8 ms at 128K / 0.95, two runs on one H100 on 2026-12-07 (results/sparse_prefill-20261207T232635Z.json,
# sparse_prefill-20261207T233203Z.json; random inputs, every head query-aware); vertical-slash, all lines, lost ~4%
# with it and keeps the tile kernel's default.
KERNEL_DEFAULTS = {"COL_MASK": 1}


def kernel_options(given: dict | None, impl: str) -> dict | None:
    """The tile kernel's settings for a call: :data:`KERNEL_DEFAULTS` under the ones ``given`` (``impl="triton"``
    only; the reference takes none)."""
    return {**KERNEL_DEFAULTS, **(given or {})} if impl == "triton" else given


def coverage_count(scores: torch.Tensor, alpha: float) -> torch.Tensor:
    """Smallest k whose top-k entries of ``scores [..., N]`` (non-negative) hold ``alpha`` of their sum."""
    return coverage_from_sorted(torch.sort(scores, dim=-1, descending=True).values, alpha)


def block_kept_pairs(k_rows: torch.Tensor, block_size: int, seq_len: int) -> torch.Tensor:
    """Pairs ``[B, H]`` a block pattern computes when query block ``i`` keeps ``min(max(k_i, min(i + 1, 3)),
    i + 1)`` blocks (``k_rows [B, H, NQB]``), without choosing them."""
    n = k_rows.shape[-1]
    i = torch.arange(n, device=k_rows.device)
    cnt = torch.minimum(torch.maximum(k_rows.long(), (i + 1).clamp(max=3)), i + 1)
    weights, offset = _tile_weights(block_size, seq_len, k_rows.device)
    return cnt.double() @ weights + offset


def flex_warning(requested, seq_len: int, p: FlexPrefillParams) -> tuple[str | None, str | None]:
    """``(now, if query-aware)``: the warning for a request the vertical-slash heads' forced lines alone exceed at
    this length, and the one for a request only query-aware heads (three blocks per query block at least) cannot
    meet: which heads are query-aware is known on the device only, so the method checks that one later."""
    if not requested:
        return None, None
    t, total = seq_len, causal_pairs(seq_len)
    reach = 1 - forced_pairs(t, p.block_size, p.sinks, p.local) / total
    if requested > reach + 1e-9:
        why = (f"vertical-slash heads keep the {p.local} local diagonals on whole {p.block_size}-token block diagonals"
               f" and {p.sinks} sink columns")
        return unreachable_message("flexprefill", requested, t, reach, why), None
    qa_reach = 1 - floor_pairs(p.block_size, t) / total
    if p.query_aware and requested > qa_reach + 1e-9:
        why = (f"its query-aware heads keep at least three of the {-(-t // p.block_size)} {p.block_size}-token "
               "blocks of every query block; use a smaller block_size")
        return None, unreachable_message("flexprefill", requested, t, qa_reach, why)
    return None, None


class FlexPrefill(PrefillMethod):
    """``q [B, H_q, T, D]``, ``k, v [B, H_kv, T, D]`` -> ``([B, H_q, T, D], info)``; causal; per query head."""

    name = "flexprefill"
    Params = FlexPrefillParams

    def __call__(self, q, k, v, sparsity=None, scale=None):
        _, t = check_qkv(q, k, v)
        requested = check_sparsity(sparsity)
        p = self.params
        impl = pick_impl(p.impl, q, ("triton",))
        scale = default_scale(q, scale)
        b, h = q.shape[:2]
        bs, n, total = p.block_size, -(-t // p.block_size), causal_pairs(t)
        warning, qa_warning = flex_warning(requested, t, p)
        if warning:
            self.warn_once(warning)
        defer_warning(self, None)  # a check an earlier call queued, if its flag has reached the host
        vert, slash, ptail = window_scores(q, k, p.window, scale, tail=bs if p.query_aware else 0, impl=impl)
        values, order = rank_lines(torch.stack([vert, slash], 2))  # one sort ranks both lines
        floor = min(p.min_budget, t)
        n_v, n_s = coverage_from_sorted(values, p.alpha).clamp(min=floor).unbind(2)
        v_order, s_order = order.unbind(2)
        lines = vs_lines(vert, slash, t, bs, p.sinks, p.local, n_vertical=n_v, n_slash=n_s, v_order=v_order,
                         s_order=s_order, impl=impl)
        qa = torch.zeros(b, h, dtype=torch.bool, device=q.device)
        if p.query_aware:
            blk = pooled_block_scores(q, k, bs, scale)
            qa = self.query_aware_heads(blk, ptail, bs, impl)
            if qa_warning:
                defer_warning(self, qa.any(), qa_warning)
            k_rows = (coverage if impl == "triton" else coverage_rows)(blk, p.alpha)
        if requested is not None:
            need = lines_kept_pairs(*lines, bs, t, impl)
            if p.query_aware:
                need = torch.where(qa, block_kept_pairs(k_rows, bs, t), need)
            budget = water_fill(need, torch.full((b,), (1 - requested) * total * h, dtype=torch.float64,
                                                 device=q.device), total, impl)
            lines = vs_lines(vert, slash, t, bs, p.sinks, p.local, budget=budget, v_order=v_order, impl=impl)
            if p.query_aware:
                k_rows = k_for_budget(budget, n, bs, t)[..., None].expand(b, h, n)
        pattern = from_lines(*lines, bs, t, impl=impl)
        if p.query_aware:
            # the diagonal is placed once by the selection, never picked among the scored blocks
            tiles, cnt = (select_row_tiles if impl == "triton" else block_tiles_rows)(blk, k_rows)
            pattern = _merge(pattern, tiles, cnt, qa)
        out = run_pattern(q, k, v, pattern, scale, impl, kernel_options=kernel_options(p.kernel_options, impl))
        kept = kept_pairs(pattern, impl)
        w = min(p.window, t)
        est = b * h * (w * t + (n * n if p.query_aware else 0))
        return out, info_dict(self.name, requested, kept.sum(), total * b * h, est, impl,
                              per_head_sparsity=1 - kept / total, query_aware_heads=qa, pattern=pattern)

    def query_aware_heads(self, blk, ptail, bs: int, impl: str = "auto") -> torch.Tensor:
        """Heads ``[B, H]`` whose pooled estimate of the last query block's distribution over key blocks is within
        ``tau`` (square-root Jensen-Shannon) of the true one (the last ``bs`` window rows' attention, by block)."""
        return block_distance(blk[:, :, -1], ptail, bs, impl) < self.params.tau


def _merge(vs: TilePattern, tiles: torch.Tensor, cnt: torch.Tensor, qa: torch.Tensor) -> TilePattern:
    """Per head: query-aware heads take ``tiles`` / ``cnt`` (their columns dropped), the others keep ``vs``'s block
    diagonals and columns: one hybrid pattern, so one kernel launch runs both kinds."""
    on = qa[..., None]
    return TilePattern(vs.block_size, vs.seq_len, torch.where(on, cnt, vs.tile_cnt).int().contiguous(),
                       torch.where(on, vs.seq_len, vs.cols).int().contiguous(),
                       torch.where(on, 0, vs.col_cnt).int().contiguous(), vs.bdiag & ~on, diags=vs.diags,
                       tiles=tiles.int().contiguous(), diag_last=True, tiled_heads=qa)
