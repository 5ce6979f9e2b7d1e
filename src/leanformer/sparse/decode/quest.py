"""Quest: query-aware page selection for decoding.

The cache is cut into pages of ``page_size`` tokens, each summarised by the element-wise minimum and maximum of its
keys. A query scores page ``p`` by the upper bound ``sum_d max(q_d min_pd, q_d max_pd)`` of its dot products, and the
step attends to the top pages within the token budget plus the current (last) page. *Quest: Query-Aware Sparsity for
Efficient Long-Context LLM Inference* (Tang et al., ICML 2024); defaults from *The Sparse Frontier* (Nawrot et al.,
2025): page 16, budget 1024 tokens, page choice shared across the GQA group (scores summed over the group), all
layers sparse.

The bound is computed as two matrix products, ``relu(q) . max + min(q, 0) . min``, which equals the element-wise form.
With ``impl="triton"`` (auto on CUDA) a step is four launches: the page scores in one kernel, top-k, and
the page-granular split-K decode kernel with its merge (pages become positions inside the kernel).
Page metadata is built once per complete page (incrementally as decoding fills pages) and kept per layer.
Asked for ``sparsity`` s, the budget is ``ceil((1 - s) L)`` tokens rounded up to whole pages; at s = 0 every page is
read (dense).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from leanformer.sparse.base import DecodeMethod, check_sparsity, default_scale, info_dict
from leanformer.sparse.decode.common import check_step, decode_info, resolve_impl, token_budget
from leanformer.sparse.kernels.decode import expand_pages, gather_decode_pages_triton, run_decode
from leanformer.sparse.kernels.quest_scores import page_scores, page_scores_triton


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


def _empty_meta() -> dict:
    return {"n_meta": 0, "buf": None}  # buf [2 (min, max), B, H_kv, capacity, D]


class Quest(DecodeMethod):
    """``q [B, H_q, 1, D]``, cache ``[B, H_kv, L, D]`` -> ``([B, H_q, 1, D], info)``."""

    name = "quest"
    Params = QuestParams

    def observe_prefill(self, layer, q, k, v, scale=None):
        self.state[layer] = _empty_meta()

    def _metadata(self, layer, k):
        """Min/max keys of the complete pages ``[B, H_kv, P, D]`` (views into buffers that grow by doubling, so a
        page filled during decoding is one small write, not a copy of all the metadata)."""
        st = self.state.setdefault(layer, _empty_meta())
        ps = self.params.page_size
        full = k.shape[2] // ps
        if st["n_meta"] > full or (st["buf"] is not None and st["buf"].shape[:2] != (2, k.shape[0])):
            st.update(_empty_meta())  # a shorter cache than last time, or another batch: a new sequence
        if st["n_meta"] < full:
            mn, mx = page_minmax(k, ps, st["n_meta"], full)
            buf = st["buf"]
            if buf is None or buf.shape[3] < full:
                cap = max(full, 2 * (buf.shape[3] if buf is not None else 0))
                grown = k.new_empty(2, *k.shape[:2], cap, k.shape[3])
                if buf is not None:
                    grown[:, :, :, :st["n_meta"]] = buf[:, :, :, :st["n_meta"]]
                st["buf"] = buf = grown
            buf[0, :, :, st["n_meta"]:full] = mn
            buf[1, :, :, st["n_meta"]:full] = mx
            st["n_meta"] = full
        if st["buf"] is None:
            return None, None
        return st["buf"][0, :, :, :full], st["buf"][1, :, :, :full]

    def select_pages(self, layer, q, k, sparsity=None, scores=page_scores):
        """The top pages ``[B, H_s, want - 1]`` (in no particular order) among the complete pages before the
        current (last) one, by ``scores`` (:func:`page_scores` or its Triton twin), and the page summaries read;
        the current page ``ceil(L / page_size) - 1`` is always read as well."""
        p = self.params
        b, hk, length, _ = k.shape
        n_pages = math.ceil(length / p.page_size)
        want = min(n_pages, math.ceil(token_budget(sparsity, p.token_budget, length) / p.page_size))
        kmin, kmax = self._metadata(layer, k)
        hs = hk if p.share_gqa else q.shape[1]
        if want > 1:
            s = scores(q, kmin[:, :, :n_pages - 1], kmax[:, :, :n_pages - 1], p.share_gqa)
            # unsorted: the decode kernels take pages in any order, and sorting the k winners would be one more
            # launch per step (a whole kernel at batch 1, where the step is launch-bound)
            top = torch.topk(s, want - 1, dim=-1, sorted=False).indices
        else:
            top = torch.empty(b, hs, 0, device=k.device, dtype=torch.long)
        return top, 2 * (n_pages - 1) * b * hk

    def select(self, layer, q, k, sparsity=None):
        """Selected positions ``idx [B, H_s, N]`` and ``valid`` (None = all); also the page summaries read."""
        ps, length = self.params.page_size, k.shape[2]
        top, meta_reads = self.select_pages(layer, q, k, sparsity)
        idx, valid = expand_pages(top, ps, length, last_page=math.ceil(length / ps) - 1)
        return idx, valid, meta_reads

    def attend(self, layer, q, k, v, sparsity=None, scale=None):
        check_step(q, k)
        requested = check_sparsity(sparsity)
        impl = resolve_impl(self.params.impl, q)
        scale = default_scale(q, scale)
        ps, length = self.params.page_size, k.shape[2]
        if impl != "triton":
            idx, valid, meta_reads = self.select(layer, q, k, requested)
            out = run_decode(q, k, v, idx, valid, scale, impl)
            return out, decode_info(self.name, requested, idx, valid, length, meta_reads, impl, page_size=ps)
        top, meta_reads = self.select_pages(layer, q, k, requested, page_scores_triton)
        last = math.ceil(length / ps) - 1
        out = gather_decode_pages_triton(q, k, v, top, ps, scale, last_page=last)
        # what decode_info counts on the expanded positions, from shapes alone (no launch, no sync): the top pages
        # are complete, the current one holds length - last * ps positions
        b, hs, n_top = top.shape
        read = b * hs * (n_top * ps + length - last * ps)
        total = float(b * hs * length)
        return out, info_dict(self.name, requested, read, total, meta_reads, impl, keys_read=read, keys_total=total,
                              page_size=ps)
