"""Streaming (sinks + local window) prefill: the content-agnostic baseline.

Every query sees the first ``sinks`` tokens and a local window; no scores are computed. *Efficient Streaming Language
Models with Attention Sinks* (Xiao et al., 2024), used as the "A-shape" pattern in MInference and as a baseline in
*The Sparse Frontier* (Nawrot et al., 2025). The window is computed on whole ``block_size`` block diagonals (local
``local`` tokens rounded up to blocks); asked for ``sparsity`` s, the window takes as many block diagonals as fit
``(1 - s)`` of the causal pairs after the sinks (all of them at s = 0: dense).
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
from leanformer.sparse.kernels import column_cost, from_diagonals, run_pattern
from leanformer.sparse.prefill.estimate import diagonal_cost, select_by_cost


@dataclass(kw_only=True, slots=True)
class StreamingParams:
    sinks: int = 4
    local: int = 1024
    block_size: int = 128
    impl: str = "auto"


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
        d = torch.arange(n, device=dev, dtype=torch.float64).expand(b, h, n)
        total = causal_pairs(t)
        if requested is None:
            bdiag = d <= -(-p.local // bs)
        else:
            budget = torch.full((b, h), (1 - requested) * total, device=dev, dtype=torch.float64)
            bdiag = select_by_cost(d, diagonal_cost(n, bs, t, dev).expand(b, h, n), budget)
            bdiag[..., 0] = True
            sink_cost = column_cost(bdiag, torch.arange(min(p.sinks, t), device=dev).expand(b, h, -1), bs, t).sum(-1)
            if requested > 0:  # make room for the sinks by dropping far block diagonals
                bdiag = select_by_cost(d, diagonal_cost(n, bs, t, dev).expand(b, h, n), budget - sink_cost)
        colmask = (torch.arange(t, device=dev) < p.sinks).expand(b, h, t)
        pattern = from_diagonals(bdiag, colmask, bs, t)
        out = run_pattern(q, k, v, pattern, default_scale(q, scale), impl)
        kept = pattern.kept_pairs()
        return out, info_dict(self.name, requested, kept.sum(), total * b * h, 0, impl,
                              per_head_sparsity=1 - kept / total, pattern=pattern)
