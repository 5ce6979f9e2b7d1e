"""Streaming (sinks + local window) prefill: the content-agnostic baseline.

Every query sees the first ``sinks`` tokens and a local window; no scores are computed. *Efficient Streaming Language
Models with Attention Sinks* (Xiao et al., 2024), used as the "A-shape" pattern in MInference and as a baseline in
*The Sparse Frontier* (Nawrot et al., 2025). The window is computed on whole ``block_size`` block diagonals (local
``local`` tokens rounded up to blocks); asked for ``sparsity`` s, the window takes as many block diagonals as fit
``(1 - s)`` of the causal pairs after the sinks (all of them at s = 0: dense). The pattern depends on the length and
the request only, so it is planned once per shape on the host, which also knows the sparsity it will measure: a
request it misses by more than :data:`TOLERANCE` (a short prompt has few block diagonals, and the first one and the
sinks are always kept) warns once per method instance with the reachable values.
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
from leanformer.sparse.kernels import column_cost, run_pattern
from leanformer.sparse.kernels.line_pattern import from_lines, kept_pairs
from leanformer.sparse.prefill.estimate import diagonal_cost, select_by_cost


@dataclass(kw_only=True, slots=True)
class StreamingParams(SparsePrefillParams):
    sinks: int = 4
    local: int = 1024
    block_size: int = 128
    impl: str = "auto"


TOLERANCE = 0.05  # |measured - requested| a request may miss by before the method warns


@lru_cache(maxsize=256)
def plan(requested: float | None, seq_len: int, block_size: int, sinks: int, local: int):
    """``(bdiag [NQB] bool, sparsity, warning or None)`` of one head (every head keeps the same lines), on the
    host."""
    t, bs = seq_len, block_size
    n = -(-t // bs)
    d = torch.arange(n, dtype=torch.float64)
    total = causal_pairs(t)
    cost = diagonal_cost(n, bs, t)
    if requested is None:
        bdiag = d <= -(-local // bs)
    else:
        budget = torch.tensor((1 - requested) * total, dtype=torch.float64)
        bdiag = select_by_cost(d, cost, budget)
        bdiag[0] = True
        sink_cost = column_cost(bdiag, torch.arange(min(sinks, t)), bs, t).sum(-1)
        if requested > 0:  # make room for the sinks by dropping far block diagonals
            bdiag = select_by_cost(d, cost, budget - sink_cost)
    bdiag[0] = True
    cols = torch.arange(min(sinks, t))
    kept = float((cost * bdiag).sum() + column_cost(bdiag, cols, bs, t).sum())
    measured = 1 - kept / total
    warning = None
    if requested is not None and abs(measured - requested) > TOLERANCE:
        floor = float(cost[0] + column_cost(d == 0, cols, bs, t).sum())
        if requested > 1 - floor / total:
            warning = unreachable_message("streaming", requested, t, 1 - floor / total,
                                          f"the first {bs}-token block diagonal and {len(cols)} sink columns are "
                                          "always kept")
        else:
            warning = (f"streaming: requested sparsity {requested:g} at {t} tokens gives {measured:.3f}: the window "
                       f"grows in whole {bs}-token block diagonals ({n} of them here); use a smaller block_size for "
                       "a finer budget. info['sparsity'] reports the measured value")
    return bdiag, measured, warning


@lru_cache(maxsize=64)
def _plan_on(device, requested, seq_len, block_size, sinks, local):
    """:func:`plan`'s block diagonals on ``device``, copied once per shape (read-only)."""
    bdiag, _, warning = plan(requested, seq_len, block_size, sinks, local)
    return bdiag.to(device), warning


class StreamingPrefill(PrefillMethod):
    """``q [B, H_q, T, D]``, ``k, v [B, H_kv, T, D]`` -> ``([B, H_q, T, D], info)``; causal."""

    name = "streaming"
    Params = StreamingParams

    def __call__(self, q, k, v, sparsity=None, scale=None):
        _, t = check_qkv(q, k, v)
        requested = check_sparsity(sparsity)
        p = self.params
        impl = pick_impl(p.impl, q, ("triton",))
        b, h = q.shape[:2]
        bs = p.block_size
        n = -(-t // bs)
        dev = q.device
        total = causal_pairs(t)
        bdiag, warning = _plan_on(dev, requested, t, bs, p.sinks, p.local)
        if warning:
            self.warn_once(warning)
        bdiag = bdiag.expand(b, h, n)
        colmask = (torch.arange(t, device=dev) < p.sinks).expand(b, h, t)
        pattern = from_lines(bdiag, colmask, bs, t, max_cols=p.sinks, impl=impl)  # fixed widths: no host sync
        out = run_pattern(q, k, v, pattern, default_scale(q, scale), impl)
        kept = kept_pairs(pattern, impl)
        return out, info_dict(self.name, requested, kept.sum(), total * b * h, 0, impl,
                              per_head_sparsity=1 - kept / total, pattern=pattern)
