"""Static KV caches that own their memory, one policy per decode method.

A policy decides, at prefill, what a row's cache keeps of a layer's prompt keys/values (``prefill``), and at each
decode step where the new token goes (``rope_append``) and what the step reads (``attend``). Every buffer is
allocated once for the batch (``slots`` per head, from the prompt lengths and the number of new tokens), so a decode
step has static shapes and no host reads: it can be captured in a CUDA graph.

* :class:`Full` (dense decode): every token.
* :class:`Evict` (SnapKV, Ada-SnapKV): *physical eviction* — only the kept prompt keys are stored, then the
  generated ones, so a sequence's cache is its budget. Ada-SnapKV's heads keep different numbers of keys; they
  share one pool per row (``starts``), so the row holds exactly ``capacity x H_kv`` prompt keys, not ``H_kv`` times
  its largest head.
* :class:`Ring` (streaming decode): the sinks and a ring of the most recent tokens; old ones are overwritten.
* :class:`Pages` (Quest): the whole cache (Quest saves reads, not memory) plus each page's min/max keys; a step
  reads its top pages and the current one, chosen in one launch (scores, candidates from the device-side lengths,
  top-k).

Budgets follow the logical methods in :mod:`leanformer.sparse.decode` with one difference: a budget given as a
sparsity is fixed at the prompt's length (the logical methods of streaming and Quest recompute it as the cache
grows), so that the step's shapes are static. At the methods' native budgets (``sparsity=None``) both read the same
keys at every step (tested).
"""

from __future__ import annotations

import math

import torch

from leanformer.errors import UserError
from leanformer.infer.kernels import cache_decode
from leanformer.infer.rope_append import rope_append
from leanformer.sparse.base import default_scale
from leanformer.sparse.decode.common import prompt_key_scores, token_budget
from leanformer.sparse.kernels.quest_scores import MAX_SELECT_PAGES, select_pages_reference, select_pages_triton


class LayerCache:
    """One layer's buffers for a batch: ``k, v [B, H_kv or 1, C, D]``, ``lens [B, H_kv]`` int32 (slots in use),
    ``starts [B, H_kv]`` int32 for a shared pool (else None), and a policy's extras (``kmin``/``kmax``)."""

    def __init__(self, batch, heads, slots, head_dim, dtype, device, pooled=False):
        shape = (batch, 1 if pooled else heads, slots, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.lens = torch.zeros(batch, heads, dtype=torch.int32, device=device)
        self.starts = torch.zeros(batch, heads, dtype=torch.int32, device=device) if pooled else None
        self.extra: dict[str, torch.Tensor] = {}
        self.n_select = 0  # Quest: pages a step picks besides the current one (a shape, fixed for the batch)
        self.no_pages = None  # Quest with n_select 0: the empty page list every step passes

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.k, self.v, *self.extra.values()))

    def _tensors(self) -> dict[str, torch.Tensor]:
        out = {"k": self.k, "v": self.v, "lens": self.lens, **self.extra}
        if self.starts is not None:
            out["starts"] = self.starts
        return out

    def copy_row(self, src: int, dst: int | slice):
        for t in self._tensors().values():
            t[dst] = t[src]

    def row_state(self, row: int, device="cpu") -> dict[str, torch.Tensor]:
        """A copy of one row's buffers (on ``device``), for :meth:`load_row` into another batch."""
        return {name: t[row].to(device, copy=True) for name, t in self._tensors().items()}

    def load_row(self, row: int, state: dict[str, torch.Tensor]):
        for name, t in self._tensors().items():
            t[row].copy_(state[name], non_blocking=True)


class Full:
    """Dense decode: the whole prompt and every generated token, each step reads them all."""

    name = "dense"

    def __init__(self, method=None, sparsity=None):
        self.method, self.sparsity = method, sparsity

    def slots(self, prompt_len: int, new_tokens: int) -> int:
        return prompt_len + new_tokens

    def new_cache(self, batch, heads, prompt_lens, new_tokens, head_dim, dtype, device) -> LayerCache:
        return LayerCache(batch, heads, self.slots(max(prompt_lens), new_tokens), head_dim, dtype, device)

    def prefill(self, cache: LayerCache, row: int, q, k, v, scale):
        t = k.shape[2]
        cache.k[row, :, :t] = k[0]
        cache.v[row, :, :t] = v[0]
        cache.lens[row] = t

    def attend(self, cache: LayerCache, q, scale, impl="auto"):
        return cache_decode(q, cache.k, cache.v, cache.lens, scale=scale, starts=cache.starts, impl=impl)

    def rope_append(self, cache: LayerCache, q, k, v, cos, sin, pos, impl="auto"):
        """Rotary on the new token's ``q, k [B, H, D]``, its key and value into the cache, the lengths advanced
        (one launch on a GPU: :func:`~.rope_append.rope_append`); returns the rotated query ``[B, H_q, D]``."""
        return rope_append(q, k, v, cos, sin, cache.k, cache.v, cache.lens, starts=cache.starts, impl=impl)

    def reads(self, cache: LayerCache, prompt_len: int, kept: int, step: int) -> int:
        """Keys one head reads at decode step ``step`` (0 = the first generated token's step)."""
        return prompt_len + step + 1


class Evict(Full):
    """SnapKV / Ada-SnapKV with physical eviction: the kept prompt keys (scored by the method at prefill), then the
    generated tokens; a step reads everything kept."""

    def __init__(self, method, sparsity=None):
        super().__init__(method, sparsity)
        self.ada = method.reduce == "max"

    def budget(self, prompt_len: int) -> int:
        return token_budget(self.sparsity, self.method.params.capacity, prompt_len)

    def new_cache(self, batch, heads, prompt_lens, new_tokens, head_dim, dtype, device) -> LayerCache:
        kept = max(self.budget(t) for t in prompt_lens)
        slots = heads * (kept + new_tokens) if self.ada else kept + new_tokens
        return LayerCache(batch, heads, slots, head_dim, dtype, device, self.ada)

    def prefill(self, cache: LayerCache, row: int, q, k, v, scale):
        p = self.method.params
        scores = prompt_key_scores(q, k, p.window, default_scale(q, scale), self.method.reduce, p.kernel)
        budget = self.budget(k.shape[2])
        # [1, H_kv, N], kept first (sorted); N known on the host (Ada: a bound, rows padded), so no sync
        idx, valid = self.method.keep(scores, budget, exact_width=False)
        n = idx.shape[-1]
        d = k.shape[-1]
        kk = torch.gather(k[0], 1, idx[0, :, :, None].expand(-1, -1, d))
        vv = torch.gather(v[0], 1, idx[0, :, :, None].expand(-1, -1, d))
        if not self.ada:
            cache.k[row, :, :n] = kk
            cache.v[row, :, :n] = vv
            cache.lens[row] = n
            return
        # Ada: each head's kept keys are a prefix of its row (valid first); heads are packed one after another, each
        # followed by room for the generated tokens. The row keeps H_kv x min(budget, T) keys in all (Ada's global
        # top-k fills the budget exactly), so the packing needs no count from the device: no sync
        hk = k.shape[1]
        new = cache.k.shape[2] // hk - budget
        total = hk * min(budget, k.shape[2])
        ok = valid[0] if valid is not None else torch.ones_like(idx[0], dtype=torch.bool)
        flat = torch.arange(hk * n, device=k.device).view(hk, n)
        order = torch.sort(torch.where(ok, flat, hk * n).flatten(), stable=True).indices[:total]
        dst = torch.arange(total, device=k.device) + torch.div(order, n, rounding_mode="floor") * new
        cache.k[row, 0].index_copy_(0, dst, kk.reshape(hk * n, d)[order])
        cache.v[row, 0].index_copy_(0, dst, vv.reshape(hk * n, d)[order])
        counts = ok.sum(-1).int()
        cache.starts[row] = torch.cumsum(counts + new, 0).int() - (counts + new)
        cache.lens[row] = counts

    def reads(self, cache: LayerCache, prompt_len: int, kept: int, step: int) -> int:
        return kept + step + 1


class Ring(Full):
    """Streaming decode: the first ``sinks`` tokens and a ring of the last ``n - sinks``, ``n`` the budget at the
    prompt's length; token ``j >= sinks`` lives in slot ``sinks + (j - sinks) mod (n - sinks)``."""

    def budget(self, prompt_len: int) -> int:
        p = self.method.params
        return token_budget(self.sparsity, p.sinks + p.window, prompt_len)

    def new_cache(self, batch, heads, prompt_lens, new_tokens, head_dim, dtype, device) -> LayerCache:
        n = max(self.budget(t) for t in prompt_lens)
        c = LayerCache(batch, heads, n, head_dim, dtype, device)
        c.extra["n"] = torch.zeros(batch, 1, dtype=torch.int32, device=device)  # this row's budget
        return c

    def _slot(self, j, n):
        sinks = torch.clamp(n, max=self.method.params.sinks)
        ring = torch.clamp(n - sinks, min=1)
        return torch.where(j < n, j, sinks + (j - sinks) % ring)

    def prefill(self, cache: LayerCache, row: int, q, k, v, scale):
        t = k.shape[2]
        budget = self.budget(t)
        n = min(budget, t)
        sinks = min(self.method.params.sinks, n)
        dev = k.device  # positions made on the device: a host-to-device copy here would wait for the GPU
        keep = torch.cat([torch.arange(sinks, device=dev), torch.arange(max(sinks, t - (n - sinks)), t, device=dev)])
        slots = self._slot(keep, torch.full((), budget, device=dev))
        cache.k[row, :, slots] = k[0][:, keep]
        cache.v[row, :, slots] = v[0][:, keep]
        cache.lens[row] = n
        cache.extra["n"][row] = budget

    def rope_append(self, cache: LayerCache, q, k, v, cos, sin, pos, impl="auto"):
        n = cache.extra["n"]
        slot = self._slot(pos[:, None].int(), n).expand_as(cache.lens).int()
        return rope_append(q, k, v, cos, sin, cache.k, cache.v, cache.lens, slot=slot, cap=n, impl=impl)

    def reads(self, cache: LayerCache, prompt_len: int, kept: int, step: int) -> int:
        return min(prompt_len + step + 1, self.budget(prompt_len))


class Pages(Full):
    """Quest: the full cache and each page's element-wise min/max keys (``[B, H_kv, C / page, D]``, cache dtype);
    a step scores the complete pages before the current one, reads its top ``want - 1`` and the current page."""

    def __init__(self, method, sparsity=None):
        super().__init__(method, sparsity)
        self.page = method.params.page_size
        if getattr(method.params, "metadata", "cache") != "cache":
            raise UserError(f"the engine keeps Quest's page summaries in the cache dtype; metadata="
                            f"{method.params.metadata!r} runs through leanformer.sparse.apply")

    def want(self, prompt_len: int) -> int:
        return math.ceil(token_budget(self.sparsity, self.method.params.token_budget, prompt_len) / self.page)

    def new_cache(self, batch, heads, prompt_lens, new_tokens, head_dim, dtype, device) -> LayerCache:
        slots = math.ceil(self.slots(max(prompt_lens), new_tokens) / self.page) * self.page
        c = LayerCache(batch, heads, slots, head_dim, dtype, device)
        shape = (batch, heads, slots // self.page, head_dim)
        c.extra["kmin"] = torch.zeros(shape, dtype=dtype, device=device)
        c.extra["kmax"] = torch.zeros(shape, dtype=dtype, device=device)
        c.n_select = max(1, max(self.want(t) for t in prompt_lens)) - 1
        return c

    def prefill(self, cache: LayerCache, row: int, q, k, v, scale):
        super().prefill(cache, row, q, k, v, scale)
        t, ps = k.shape[2], self.page
        n = -(-t // ps)  # the last page may be partial: its summary covers the keys it has (decode extends it)
        pages = torch.nn.functional.pad(k[0], (0, 0, 0, n * ps - t)).unflatten(1, (n, ps))
        filled = (torch.arange(n * ps, device=k.device) < t).view(1, n, ps, 1)
        big = torch.finfo(k.dtype).max
        cache.extra["kmin"][row, :, :n] = torch.where(filled, pages, big).amin(2)
        cache.extra["kmax"][row, :, :n] = torch.where(filled, pages, -big).amax(2)

    def rope_append(self, cache: LayerCache, q, k, v, cos, sin, pos, impl="auto"):
        """As :class:`Full`, and the new key joins the min/max summary of its page in the same launch."""
        meta = (cache.extra["kmin"], cache.extra["kmax"], self.page)
        return rope_append(q, k, v, cos, sin, cache.k, cache.v, cache.lens, meta=meta, impl=impl)

    def select(self, cache: LayerCache, q):
        """Top ``cache.n_select`` complete pages before the current one, ``-1`` where fewer exist: ``[B, H_s, n]``.
        On CUDA one launch scores the pages and picks them (the lengths read on the device)."""
        kmin, kmax = cache.extra["kmin"], cache.extra["kmax"]
        args = (q[:, :, None], kmin, kmax, min(cache.n_select, kmin.shape[2]), self.method.params.share_gqa)
        if q.is_cuda and self.method.params.impl != "reference" and kmin.shape[2] <= MAX_SELECT_PAGES:
            return select_pages_triton(*args, lens=cache.lens, page_size=self.page)
        return select_pages_reference(*args, lens=cache.lens, page_size=self.page)

    def attend(self, cache: LayerCache, q, scale, impl="auto"):
        if cache.n_select == 0:  # only the current page: an empty page list, made once per cache
            if cache.no_pages is None:
                cache.no_pages = torch.empty(*q.shape[:1], cache.lens.shape[1], 0, dtype=torch.int32,
                                             device=q.device)
            pages = cache.no_pages
        else:
            pages = self.select(cache, q)
        return cache_decode(q, cache.k, cache.v, cache.lens, pages, self.page, scale, impl=impl)

    def reads(self, cache: LayerCache, prompt_len: int, kept: int, step: int) -> int:
        length = prompt_len + step + 1
        cur = (length - 1) // self.page
        return min(cur, cache.n_select) * self.page + length - cur * self.page


POLICIES = {"dense": Full, "snapkv": Evict, "ada_snapkv": Evict, "streaming": Ring, "quest": Pages}


def policy_for(method, sparsity=None):
    """The cache policy of a built decode method (``None``: dense)."""
    name = "dense" if method is None else method.name
    if name not in POLICIES:
        raise UserError(f"decode method {name!r} has no static-cache policy; choose one of {sorted(POLICIES)}")
    return POLICIES[name](method, sparsity)
