"""Quest: query-aware page selection for decoding.

The cache is cut into pages of ``page_size`` tokens, each summarised by the element-wise minimum and maximum of its
keys. A query scores page ``p`` by the upper bound ``sum_d max(q_d min_pd, q_d max_pd)`` of its dot products, and the
step attends to the top pages within the token budget plus the current (last) page. *Quest: Query-Aware Sparsity for
Efficient Long-Context LLM Inference* (Tang et al., ICML 2024); defaults from *The Sparse Frontier* (Nawrot et al.,
2025): page 16, budget 1024 tokens, page choice shared across the GQA group (scores summed over the group), all
layers sparse.

The bound is computed as two matrix products, ``relu(q) . max + min(q, 0) . min``, which equals the element-wise form.
Page metadata is built once per complete page (incrementally as decoding fills pages) and kept per layer.
Asked for ``sparsity`` s, the budget is ``ceil((1 - s) L)`` tokens rounded up to whole pages; at s = 0 every page is
read (dense).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from leanformer.sparse.base import DecodeMethod, check_sparsity, default_scale
from leanformer.sparse.decode.common import check_step, decode_info, resolve_impl, token_budget
from leanformer.sparse.kernels.decode import run_decode


@dataclass(kw_only=True, slots=True)
class QuestParams:
    page_size: int = 16
    token_budget: int = 1024
    share_gqa: bool = True
    impl: str = "auto"


def page_minmax(k: torch.Tensor, page_size: int, start: int, stop: int):
    """Min and max keys of complete pages ``start..stop-1``: two ``[B, H_kv, stop - start, D]`` tensors."""
    b, h, _, d = k.shape
    pages = k[:, :, start * page_size:stop * page_size].reshape(b, h, stop - start, page_size, d)
    return pages.amin(-2), pages.amax(-2)


def page_scores(q: torch.Tensor, kmin: torch.Tensor, kmax: torch.Tensor, share_gqa: bool) -> torch.Tensor:
    """``q [B, H_q, 1, D]``, page metadata ``[B, H_kv, P, D]`` -> scores ``[B, H_kv or H_q, P]`` fp32."""
    b, hq, _, d = q.shape
    hk = kmin.shape[1]
    qg = q.reshape(b, hk, hq // hk, d)
    # in the cache dtype (no fp32 copy of the metadata); scores only rank pages
    s = torch.matmul(qg.clamp(min=0), kmax.transpose(-1, -2)).float()
    s = s + torch.matmul(qg.clamp(max=0), kmin.transpose(-1, -2)).float()  # [B, H_kv, G, P]
    return s.sum(2) if share_gqa else s.reshape(b, hq, -1)


class Quest(DecodeMethod):
    """``q [B, H_q, 1, D]``, cache ``[B, H_kv, L, D]`` -> ``([B, H_q, 1, D], info)``."""

    name = "quest"
    Params = QuestParams

    def observe_prefill(self, layer, q, k, v, scale=None):
        self.state[layer] = {"n_meta": 0, "kmin": None, "kmax": None}

    def _metadata(self, layer, k):
        st = self.state.setdefault(layer, {"n_meta": 0, "kmin": None, "kmax": None})
        ps = self.params.page_size
        full = k.shape[2] // ps
        if st["n_meta"] > full:  # a shorter cache than last time: a new sequence
            st.update(n_meta=0, kmin=None, kmax=None)
        if st["n_meta"] < full:
            mn, mx = page_minmax(k, ps, st["n_meta"], full)
            st["kmin"] = mn if st["kmin"] is None else torch.cat([st["kmin"], mn], 2)
            st["kmax"] = mx if st["kmax"] is None else torch.cat([st["kmax"], mx], 2)
            st["n_meta"] = full
        return st["kmin"], st["kmax"]

    def select(self, layer, q, k, sparsity=None):
        """Selected positions ``idx [B, H_s, N]`` and ``valid`` (None = all); also the page summaries read."""
        p = self.params
        ps = p.page_size
        b, hk, length, _ = k.shape
        n_pages = math.ceil(length / ps)
        want = min(n_pages, math.ceil(token_budget(sparsity, p.token_budget, length) / ps))
        kmin, kmax = self._metadata(layer, k)
        hs = hk if p.share_gqa else q.shape[1]
        current = torch.full((b, hs, 1), n_pages - 1, device=k.device, dtype=torch.long)
        if want > 1:
            scores = page_scores(q, kmin[:, :, :n_pages - 1], kmax[:, :, :n_pages - 1], p.share_gqa)
            top = torch.topk(scores, want - 1, dim=-1).indices
            pages = torch.cat([top, current], -1)
        else:
            pages = current
        idx = (pages[..., None] * ps + torch.arange(ps, device=k.device)).reshape(b, hs, -1)
        valid = None if length % ps == 0 else idx < length
        return idx, valid, 2 * (n_pages - 1) * b * hk

    def attend(self, layer, q, k, v, sparsity=None, scale=None):
        check_step(q, k)
        requested = check_sparsity(sparsity)
        impl = resolve_impl(self.params.impl, q)
        idx, valid, meta_reads = self.select(layer, q, k, requested)
        out = run_decode(q, k, v, idx, valid, default_scale(q, scale), impl)
        return out, decode_info(self.name, requested, idx, valid, k.shape[2], meta_reads, impl,
                                page_size=self.params.page_size)
