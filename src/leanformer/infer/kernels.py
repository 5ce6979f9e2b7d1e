"""One decode step over a static KV cache whose lengths live on the device: a Triton split-K kernel and a
plain-PyTorch reference with the same signature.

``cache_decode(q, k, v, lens, pages=None, page_size=0, scale=None)``:

* ``q [B, H_q, D]`` (one new query per row), cache ``k, v [B, H_kv, C, D]`` (``C`` slots per head, any strides with a
  unit last one), ``lens [B, H_kv]`` int32: slots ``0 .. lens - 1`` of each head hold keys (contiguous mode).
  Or one pool per row shared by its heads, ``k, v [B, 1, C, D]`` with ``starts [B, H_kv]`` int32: head ``h`` holds
  slots ``starts .. starts + lens - 1`` (heads that keep different numbers of keys, without padding each to the
  largest).
* Page mode (``pages [B, H_s, P]`` int32, ``page_size > 0``): ``lens`` is the cache length per row and head; each
  selection head reads its ``P`` listed pages (``-1`` = none) and then the current page ``(lens - 1) // page_size``,
  positions ``>= lens`` masked. ``H_s`` is ``H_kv`` (one choice per key head, shared by its GQA group) or ``H_q``.
  Listed pages must be distinct and before the current one.

Returns ``[B, H_q, D]`` in ``q.dtype``. Nothing in a call reads a length on the host, so a whole decode step that
calls it can be captured once in a CUDA graph and replayed while the lengths grow: grid and split plan depend only
on ``C`` (or ``P``), never on ``lens``; programs whose part of the cache is beyond ``lens`` return at once.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from leanformer.nn.gpu import sm_count
from leanformer.sparse.kernels.decode import split_outputs, split_plan
from leanformer.sparse.kernels.tile_attention import need_triton, triton

BLOCK_N = 64
# a split reads at least this many entries: below it, merging the partials costs more than the parallelism gains
# (SnapKV's 8K kept keys at 128K: 32 splits rather than 99, on an H100)
MIN_SPLIT = 256

if triton is not None:
    import triton.language as tl

    from leanformer.sparse.kernels.decode import gathered_step, merge_splits, write_split

    @triton.jit
    def _cache_decode_fwd(Q, K, V, LENS, STARTS, PAGES, OP, MP, LP, OUT, qk_scale, sqb, sqh, skb, skh, skt, svb, svh,
                          svt, slb, slh, spb, sph, HS, G, KVDIV, N, CHUNK, NSPLIT, NP,
                          PAGE: tl.constexpr, HAS_START: tl.constexpr, ONE_SPLIT: tl.constexpr,
                          BLOCK_G: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr):
        """Program ``(b * HS + hs, split)``: the ``G`` query rows of selection head ``hs`` over entries
        ``split * CHUNK ..`` of its list (slots, or ``PAGE`` positions per listed page then the current page).
        ``HAS_START``: head ``h``'s slots begin at ``STARTS[b, h]`` of a pool its row's heads share."""
        pid = tl.program_id(0)
        sp = tl.program_id(1)
        # row and head offsets in int64: a large batch's cache passes 2^31 elements
        b = (pid // HS).to(tl.int64)
        hs = pid % HS
        kvh = (hs // KVDIV).to(tl.int64)
        offs_g = tl.arange(0, BLOCK_G)
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, D)
        gm = offs_g < G
        length = tl.load(LENS + b * slb + kvh * slh)
        base = 0
        if HAS_START:
            base = tl.load(STARTS + b * slb + kvh * slh)
        q = tl.load(Q + b * sqb + (hs * G + offs_g)[:, None] * sqh + offs_d[None, :], mask=gm[:, None], other=0.0)
        m_i = tl.full([BLOCK_G], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_G], tl.float32)
        acc = tl.zeros([BLOCK_G, D], tl.float32)
        start = sp * CHUNK
        if PAGE == 0:
            stop = tl.minimum(start + CHUNK, length)
        else:
            stop = tl.minimum(start + CHUNK, N)
            cur = (length - 1) // PAGE
        for n0 in range(start, stop, BLOCK_N):
            offs = n0 + offs_n
            if PAGE == 0:
                idx = base + offs
                ok = offs < stop
            else:
                slot = offs // PAGE
                page = tl.load(PAGES + b * spb + hs * sph + slot, mask=(offs < stop) & (slot < NP), other=-1)
                page = tl.where(slot < NP, page, cur)
                idx = page * PAGE + offs % PAGE
                ok = (offs < stop) & (page >= 0) & (idx < length)
            acc, l_i, m_i = gathered_step(q, K + b * skb + kvh * skh, V + b * svb + kvh * svh, idx, ok, skt, svt,
                                          offs_d, acc, l_i, m_i, qk_scale)
        write_split(OUT, OP, MP, LP, acc, l_i, m_i, pid, sp, G, NSPLIT, offs_g, offs_d, gm, BLOCK_G, D, ONE_SPLIT)


def _check(q, k, v, lens, pages, page_size, starts):
    if q.dim() != 3 or k.dim() != 4 or k.shape != v.shape:
        raise ValueError(f"cache_decode takes q [B, H_q, D] and k, v [B, H_kv, C, D]; got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    hk = lens.shape[1]
    if q.shape[1] % hk or lens.shape[0] != k.shape[0] or k.shape[1] != (1 if starts is not None else hk):
        raise ValueError(f"heads of q {tuple(q.shape)}, cache {tuple(k.shape)} and lens {tuple(lens.shape)} differ "
                         "(a pool shared by a row's heads is [B, 1, C, D] with starts)")
    if starts is not None and (starts.shape != lens.shape or pages is not None):
        raise ValueError("starts must have the shape of lens, and pools take no pages")
    if (pages is None) != (page_size == 0):
        raise ValueError("page mode takes both pages and page_size > 0")
    if pages is not None and pages.shape[1] not in (q.shape[1], hk):
        raise ValueError(f"selection heads ({pages.shape[1]}) must equal query or key/value heads")


def cache_decode_triton(q, k, v, lens, pages=None, page_size: int = 0, scale: float | None = None, starts=None,
                        block_n: int = BLOCK_N) -> torch.Tensor:
    """The fused split-K kernel and its merge: at most two launches, no host read of ``lens``."""
    _check(q, k, v, lens, pages, page_size, starts)
    need_triton(q, "cache_decode_triton", "cache_decode_reference")
    b, hq, d = q.shape
    hk, cap = lens.shape[1], k.shape[2]
    hs = hk if pages is None else pages.shape[1]
    g = hq // hk
    rows, kvdiv = (g, 1) if hs == hk else (1, g)
    n_pages = 0 if pages is None else pages.shape[2]
    # a pool is shared by the row's heads: each head's list is at most the whole pool
    n = cap if pages is None else (n_pages + 1) * page_size
    block_g = max(16, 1 << (rows - 1).bit_length())
    nsplit, chunk = split_plan(b * hs, n, sm_count(q.device), block_n, MIN_SPLIT)
    out, op, mp, lp = split_outputs(q, b * hs, rows, nsplit, block_g)
    scale = scale if scale is not None else d ** -0.5
    pg = lens if pages is None else pages
    skh, svh = (0, 0) if starts is not None else (k.stride(1), v.stride(1))
    _cache_decode_fwd[(b * hs, nsplit)](
        q, k, v, lens, lens if starts is None else starts, pg, op, mp, lp, out, scale * 1.4426950408889634,
        q.stride(0), q.stride(1), k.stride(0), skh, k.stride(2), v.stride(0), svh, v.stride(2), lens.stride(0),
        lens.stride(1), pg.stride(0), pg.stride(1), hs, rows, kvdiv, n, chunk, nsplit, n_pages,
        PAGE=page_size, HAS_START=starts is not None, ONE_SPLIT=nsplit == 1, BLOCK_G=block_g, BLOCK_N=block_n, D=d,
        num_warps=4, num_stages=2)
    if nsplit > 1:
        merge_splits[(b * hs, rows)](op, mp, lp, out, nsplit, rows, block_g,
                                     BLOCK_S=max(2, 1 << (nsplit - 1).bit_length()), D=d, num_warps=4)
    return out.view(b, hq, d)


def read_mask(k, lens, pages=None, page_size: int = 0, starts=None) -> torch.Tensor:
    """Which cache slots a step reads: bool ``[B, H_s, C]`` (``H_s`` = ``H_kv``, or the pages' heads)."""
    b, hk = lens.shape
    cap = k.shape[2]
    slot = torch.arange(cap, device=k.device)
    if pages is None:
        first = 0 if starts is None else starts[..., None]
        return (slot >= first) & (slot < first + lens[..., None])
    hs = pages.shape[1]
    length = lens if hs == hk else lens.repeat_interleave(hs // hk, 1)
    cur = (length - 1) // page_size
    listed = torch.zeros(b, hs, cap // page_size + 2, dtype=torch.bool, device=k.device)
    listed.scatter_(-1, torch.where(pages >= 0, pages, listed.shape[-1] - 1).long(), True)
    listed[..., -1] = False
    listed.scatter_(-1, cur[..., None].long(), True)
    page = torch.div(slot, page_size, rounding_mode="floor")
    return listed[..., page] & (slot < length[..., None])


def cache_decode_reference(q, k, v, lens, pages=None, page_size: int = 0, scale: float | None = None, starts=None):
    """SDPA over the whole cache with :func:`read_mask` as its mask (what the kernel must equal)."""
    _check(q, k, v, lens, pages, page_size, starts)
    b, hq, d = q.shape
    hk = lens.shape[1]
    mask = read_mask(k, lens, pages, page_size, starts)
    if mask.shape[1] == hk:
        mask = mask.repeat_interleave(hq // hk, 1)
    kf, vf = k.float(), v.float()
    kf, vf = (x.expand(b, hk, *x.shape[2:]) for x in (kf, vf))  # a shared pool: every head sees it
    out = F.scaled_dot_product_attention(q[:, :, None].float(), kf.repeat_interleave(hq // hk, 1),
                                         vf.repeat_interleave(hq // hk, 1), attn_mask=mask[:, :, None], scale=scale)
    return out[:, :, 0].to(q.dtype)


def cache_decode(q, k, v, lens, pages=None, page_size: int = 0, scale: float | None = None, starts=None,
                 impl: str = "auto"):
    """``impl``: ``"triton"``, ``"reference"``, or ``"auto"`` (Triton on CUDA, else the reference)."""
    if impl == "auto":
        impl = "triton" if (q.is_cuda and triton is not None) else "reference"
    fn = cache_decode_triton if impl == "triton" else cache_decode_reference
    return fn(q, k, v, lens, pages, page_size, scale, starts)
