"""Quest: query-aware page selection for decoding.

The cache is cut into pages of ``page_size`` tokens, each summarised by the element-wise minimum and maximum of its
keys. A query scores page ``p`` by the upper bound ``sum_d max(q_d min_pd, q_d max_pd)`` of its dot products, and the
step attends to the top pages within the token budget plus the current (last) page. *Quest: Query-Aware Sparsity for
Efficient Long-Context LLM Inference* (Tang et al., ICML 2024); defaults from *The Sparse Frontier* (Nawrot et al.,
2025): page 16, budget 1024 tokens, page choice shared across the GQA group (scores summed over the group), all
layers sparse.

The bound is computed as two matrix products, ``relu(q) . max + min(q, 0) . min``, which equals the element-wise form.
With ``impl="triton"`` (auto on CUDA) a step is three launches: one scores the pages and picks the top ones
(``kernels/quest_scores.select_pages_triton``: the last program of each key head selects), one reads the chosen
pages split-K (``kernels/decode.gather_decode_pages_triton``), one merges the splits (``kernels/decode.FUSED_MERGE``
makes the last split of each head merge instead: two launches). Page metadata is built once per complete page
(incrementally as decoding fills pages) and kept per layer, in the cache dtype (``metadata="cache"``) or as int8
with a scale per page and head (``metadata="int8"``: half the bytes of bf16 read per step, rounded outward so the
score stays an upper bound).
Asked for ``sparsity`` s, the budget is ``ceil((1 - s) L)`` tokens rounded up to whole pages; at s = 0 every page is
read (dense). Where whole pages miss the request by more than :data:`TOLERANCE` (short caches), the method warns once
per instance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from leanformer.errors import UserError
from leanformer.sparse.base import DecodeMethod, check_sparsity, default_scale, info_dict
from leanformer.sparse.decode.common import check_step, decode_info, resolve_impl, token_budget
from leanformer.sparse.kernels.decode import expand_pages, gather_decode_pages_triton, run_decode
from leanformer.sparse.kernels.quest_scores import page_scores, quantize_pages, select_pages_triton

METADATA = ("cache", "int8")
TOLERANCE = 0.05  # |measured - requested| sparsity whole pages may miss by before the method warns


@dataclass(kw_only=True, slots=True)
class QuestParams:
    page_size: int = 16
    token_budget: int = 1024
    share_gqa: bool = True
    metadata: str = "cache"  # page min/max keys: "cache" (the cache dtype) or "int8" (scaled per page, half of bf16)
    impl: str = "auto"


def page_minmax(k: torch.Tensor, page_size: int, start: int, stop: int):
    """Min and max keys of complete pages ``start..stop-1``: two ``[B, H_kv, stop - start, D]`` tensors."""
    b, h, _, d = k.shape
    pages = k[:, :, start * page_size:stop * page_size].reshape(b, h, stop - start, page_size, d)
    return pages.amin(-2), pages.amax(-2)


def _empty_meta() -> dict:
    # buf [2 (min, max), B, H_kv, capacity, D]; scales [2, B, H_kv, capacity] fp32 for int8 summaries
    return {"n_meta": 0, "buf": None, "scales": None}


class Quest(DecodeMethod):
    """``q [B, H_q, 1, D]``, cache ``[B, H_kv, L, D]`` -> ``([B, H_q, 1, D], info)``."""

    name = "quest"
    Params = QuestParams

    def __init__(self, **params):
        super().__init__(**params)
        if self.params.metadata not in METADATA:
            raise UserError(f"unknown quest metadata {self.params.metadata!r}; choose one of {METADATA}")

    def observe_prefill(self, layer, q, k, v, scale=None):
        self.state[layer] = _empty_meta()

    def _metadata(self, layer, k):
        """Min/max keys of the complete pages ``[B, H_kv, P, D]`` (int8 for ``metadata="int8"``: see
        :meth:`_page_meta` for their scales)."""
        return self._page_meta(layer, k)[:2]

    def _page_meta(self, layer, k):
        """``(kmin, kmax, kmin_scale, kmax_scale)`` of the complete pages (scales ``[B, H_kv, P]`` or None): views
        into buffers that grow by doubling, so a page filled during decoding is one small write, not a copy of all
        the metadata."""
        st = self.state.setdefault(layer, _empty_meta())
        ps = self.params.page_size
        int8 = self.params.metadata == "int8"
        full = k.shape[2] // ps
        if st["n_meta"] > full or (st["buf"] is not None and st["buf"].shape[:2] != (2, k.shape[0])):
            st.update(_empty_meta())  # a shorter cache than last time, or another batch: a new sequence
        if st["n_meta"] < full:
            new = page_minmax(k, ps, st["n_meta"], full)
            if int8:
                *new, smin, smax = quantize_pages(*new)
            buf, scales = st["buf"], st["scales"]
            if buf is None or buf.shape[3] < full:
                cap = max(full, 2 * (buf.shape[3] if buf is not None else 0))
                grown = torch.empty(2, *k.shape[:2], cap, k.shape[3], device=k.device,
                                    dtype=torch.int8 if int8 else k.dtype)
                if buf is not None:
                    grown[:, :, :, :st["n_meta"]] = buf[:, :, :, :st["n_meta"]]
                st["buf"] = buf = grown
                if int8:
                    grown_s = torch.empty(2, *k.shape[:2], cap, device=k.device, dtype=torch.float32)
                    if scales is not None:
                        grown_s[..., :st["n_meta"]] = scales[..., :st["n_meta"]]
                    st["scales"] = scales = grown_s
            buf[0, :, :, st["n_meta"]:full] = new[0]
            buf[1, :, :, st["n_meta"]:full] = new[1]
            if int8:
                scales[0, :, :, st["n_meta"]:full] = smin
                scales[1, :, :, st["n_meta"]:full] = smax
            st["n_meta"] = full
        if st["buf"] is None:
            return None, None, None, None
        buf, scales = st["buf"][:, :, :, :full], st["scales"]
        return buf[0], buf[1], *((scales[0, ..., :full], scales[1, ..., :full]) if int8 else (None, None))

    def _want(self, sparsity, length: int) -> int:
        """Pages a step reads (the current one included), and a warning when whole pages miss the request."""
        p = self.params
        n_pages = math.ceil(length / p.page_size)
        want = min(n_pages, math.ceil(token_budget(sparsity, p.token_budget, length) / p.page_size))
        if sparsity is not None and not self._warned:
            last = n_pages - 1
            read = (max(want, 1) - 1) * p.page_size + length - last * p.page_size
            measured = 1 - read / length
            if abs(measured - sparsity) > TOLERANCE:
                self.warn_once(f"quest: requested sparsity {sparsity:g} over a cache of {length} tokens reads {read} "
                               f"(sparsity {measured:.3f}): the budget is whole pages of {p.page_size} tokens plus "
                               "the current page; a smaller page_size follows the request more closely. "
                               "info['sparsity'] reports the measured value")
        return want

    def select_pages(self, layer, q, k, sparsity=None, scores=page_scores):
        """The top pages ``[B, H_s, want - 1]`` (in no particular order) among the complete pages before the
        current (last) one, by ``scores`` (:func:`page_scores` or its Triton twin), and the page summaries read;
        the current page ``ceil(L / page_size) - 1`` is always read as well."""
        p = self.params
        b, hk, length, _ = k.shape
        n_pages = math.ceil(length / p.page_size)
        want = self._want(sparsity, length)
        kmin, kmax, smin, smax = self._page_meta(layer, k)
        hs = hk if p.share_gqa else q.shape[1]
        if want > 1:
            cut = n_pages - 1
            scaled = {} if smin is None else {"kmin_scale": smin[..., :cut], "kmax_scale": smax[..., :cut]}
            s = scores(q, kmin[:, :, :cut], kmax[:, :, :cut], p.share_gqa, **scaled)
            # unsorted: the decode kernels take pages in any order, and sorting the k winners would be one more
            # launch per step (a whole kernel at batch 1, where the step is launch-bound)
            top = torch.topk(s, want - 1, dim=-1, sorted=False).indices
        else:
            top = torch.empty(b, hs, 0, device=k.device, dtype=torch.long)
        return top, 2 * (n_pages - 1) * b * hk

    def select_pages_fused(self, layer, q, k, sparsity=None):
        """:meth:`select_pages` in one launch (:func:`select_pages_triton`): ``[B, H_s, want - 1]`` int32 page ids
        in page order (equal scores: the lower page), and the page summaries read."""
        p = self.params
        b, hk, length, _ = k.shape
        n_pages = math.ceil(length / p.page_size)
        want = self._want(sparsity, length)
        if want <= 1:
            hs = hk if p.share_gqa else q.shape[1]
            return torch.empty(b, hs, 0, device=k.device, dtype=torch.int32), 2 * (n_pages - 1) * b * hk
        kmin, kmax, smin, smax = self._page_meta(layer, k)
        cut = n_pages - 1
        scaled = (None, None) if smin is None else (smin[..., :cut], smax[..., :cut])
        top = select_pages_triton(q, kmin[:, :, :cut], kmax[:, :, :cut], want - 1, p.share_gqa, *scaled)
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
        top, meta_reads = self.select_pages_fused(layer, q, k, requested)
        last = math.ceil(length / ps) - 1
        out = gather_decode_pages_triton(q, k, v, top, ps, scale, last_page=last)
        # what decode_info counts on the expanded positions, from shapes alone (no launch, no sync): the top pages
        # are complete, the current one holds length - last * ps positions
        b, hs, n_top = top.shape
        read = b * hs * (n_top * ps + length - last * ps)
        total = float(b * hs * length)
        return out, info_dict(self.name, requested, read, total, meta_reads, impl, keys_read=read, keys_total=total,
                              page_size=ps)
