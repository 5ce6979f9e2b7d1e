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
from leanformer.sparse.kernels import TilePattern, from_tiles, run_pattern
from leanformer.sparse.prefill.block_topk import block_pattern, kept_for_k
from leanformer.sparse.prefill.estimate import pooled_block_scores, vs_scores
from leanformer.sparse.prefill.vertical_slash import vs_pattern


@dataclass(kw_only=True, slots=True)
class FlexPrefillParams:
    alpha: float = 0.65
    tau: float = 0.1
    window: int = 512
    min_budget: int = 512
    sinks: int = 4
    local: int = 64
    block_size: int = 128
    query_aware: bool = True
    impl: str = "auto"


def coverage_count(scores: torch.Tensor, alpha: float) -> torch.Tensor:
    """Smallest k whose top-k entries of ``scores [..., N]`` (non-negative) hold ``alpha`` of their sum."""
    s = torch.sort(scores, dim=-1, descending=True).values
    cum = torch.cumsum(s, -1)
    return (cum < alpha * cum[..., -1:]).sum(-1) + 1


def sqrt_js(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Square root of the Jensen-Shannon divergence between distributions along the last dim."""
    m = 0.5 * (p + q)
    kl = lambda a, b: (a * (torch.log(a.clamp_min(1e-20)) - torch.log(b.clamp_min(1e-20)))).sum(-1)  # noqa: E731
    return (0.5 * kl(p, m) + 0.5 * kl(q, m)).clamp_min(0).sqrt()


def water_fill(need: torch.Tensor, total: torch.Tensor, cap: float, iters: int = 60) -> torch.Tensor:
    """Budgets ``min(cap, lam * need)`` per head ``[B, H]`` whose sum per row equals ``total [B]`` (or all ``cap``)."""
    need = need.double().clamp_min(1.0)
    lo = torch.zeros_like(total, dtype=torch.float64)
    hi = torch.full_like(lo, cap) / need.min(-1).values
    for _ in range(iters):
        mid = (lo + hi) / 2
        over = torch.minimum(need * mid[:, None], torch.tensor(cap, dtype=torch.float64)).sum(-1) > total
        hi = torch.where(over, mid, hi)
        lo = torch.where(over, lo, mid)
    return torch.minimum(need * lo[:, None], torch.tensor(cap, dtype=torch.float64))


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
        vert, slash, ptail = vs_scores(q, k, p.window, scale, tail=bs if p.query_aware else 0)
        floor = min(p.min_budget, t)
        n_v = coverage_count(vert, p.alpha).clamp(min=floor)
        n_s = coverage_count(slash, p.alpha).clamp(min=floor)
        qa = torch.zeros(b, h, dtype=torch.bool, device=q.device)
        blk_scores = None
        if p.query_aware:
            blk_scores = pooled_block_scores(q, k, bs, scale)
            estimate = torch.softmax(blk_scores[:, :, -1], -1)
            true = torch.zeros(b, h, n * bs, device=q.device)
            true[..., :t] = ptail
            qa = sqrt_js(estimate, true.reshape(b, h, n, bs).sum(-1)) < p.tau
            probs = torch.softmax(blk_scores, -1)
            k_rows = coverage_count(probs, p.alpha)
        vs_native = vs_pattern(vert, slash, t, bs, p.sinks, p.local, n_vertical=n_v, n_slash=n_s)
        if requested is None:
            vs = vs_native
            if qa.any():
                qa_pat = block_pattern(blk_scores, k_rows, bs, t)
        else:
            need = vs_native.kept_pairs()
            if qa.any():
                need = torch.where(qa, block_pattern(blk_scores, k_rows, bs, t).kept_pairs(), need)
            budget = water_fill(need, torch.full((b,), (1 - requested) * total * h, device=q.device), float(total))
            vs = vs_pattern(vert, slash, t, bs, p.sinks, p.local, budget=budget)
            if qa.any():
                table = kept_for_k(n, bs, t, q.device)
                kk = torch.searchsorted(table, budget.contiguous() * (1 + 1e-9) + 0.5, right=True).clamp(1, n)
                qa_pat = block_pattern(blk_scores, kk[..., None].expand(b, h, n), bs, t)
        pattern = vs if not qa.any() else _merge(vs, qa_pat, qa)
        out = run_pattern(q, k, v, pattern, scale, impl)
        kept = pattern.kept_pairs()
        w = min(p.window, t)
        est = b * h * (w * t + (n * n if p.query_aware else 0))
        return out, info_dict(self.name, requested, kept.sum(), total * b * h, est, impl,
                              per_head_sparsity=1 - kept / total, query_aware_heads=qa.cpu(),
                              pattern=pattern)


def _merge(vs: TilePattern, qa_pat: TilePattern, qa: torch.Tensor) -> TilePattern:
    """Per head: query-aware heads take ``qa_pat``'s tiles, the others keep ``vs`` (tiles from block diagonals,
    columns). Columns of query-aware heads are dropped."""
    blk = torch.where(qa[..., None, None], qa_pat.block_mask(), vs.block_mask())
    merged = from_tiles(blk, vs.block_size, vs.seq_len)
    keep_cols = ~qa[..., None]
    cols = torch.where(keep_cols, vs.cols, vs.seq_len).int()
    col_cnt = torch.where(keep_cols, vs.col_cnt, 0).int()
    merged.cols, merged.col_cnt = cols.contiguous(), col_cnt.contiguous()
    merged.bdiag = vs.bdiag & keep_cols
    return merged
