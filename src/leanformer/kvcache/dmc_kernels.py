"""DMC cache kernels: the append-or-merge update and decode attention over ragged paged per-head caches.

Each op has a plain-PyTorch reference (``*_reference``, any device, the ground truth) and a Triton fast path
(``*_triton``, GPU; also runs on CPU under ``TRITON_INTERPRET=1``), with the same signature. Cache layout of one
layer (see :class:`~leanformer.kvcache.dmc_cache.DMCCache`):

* ``k_pages, v_pages [N, P, D]``: a pool of ``N`` pages of ``P`` slots;
* ``page_table [B, H, M]`` int32: page ids of head ``(b, h)`` in slot order; ``lengths [B, H]`` int32 slots used;
* ``run [B, H]`` int32 tokens merged into the last slot; ``acc_k, acc_v [B, H, D]``, ``acc_w [B, H]`` fp32: the
  unnormalised sums of the last slot (slot = acc_k / acc_w);
* ``next_page [1]`` int32: the first free page of the pool (pages are handed out in increasing order).

The update of head ``(b, h)`` with token ``k, v [B, H, D]``, decision logit ``alpha_logit [B, H]`` and importance
``omega [B, H]`` merges when ``alpha_logit > 0`` and the head has a slot holding fewer than ``window`` tokens, else
appends (Nawrot et al., 2024, Eq. 3–4 with hard decisions). It returns ``merged [B, H]`` (bool).
"""

from __future__ import annotations

import math

import torch

from leanformer.nn.attention import attention
from leanformer.nn.gpu import fix_interpreter_bf16_dot, sm_count

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the references are complete
    triton = None

fix_interpreter_bf16_dot()  # under TRITON_INTERPRET=1 only


def dmc_update_reference(k_pages, v_pages, page_table, lengths, run, acc_k, acc_v, acc_w, next_page,
                         k, v, alpha_logit, omega, window: int) -> torch.Tensor:
    """In-place append-or-merge of one token per head (plain PyTorch). Returns ``merged [B, H]``."""
    b, h, m = page_table.shape
    page = k_pages.shape[1]
    merge = (alpha_logit > 0) & (run < window) & (lengths > 0)
    w = omega.float()
    keep = merge.float()
    acc_k.mul_(keep[..., None]).add_(w[..., None] * k.float())
    acc_v.mul_(keep[..., None]).add_(w[..., None] * v.float())
    acc_w.mul_(keep).add_(w)
    slot = torch.where(merge, lengths - 1, lengths).long()
    need = ~merge & (slot % page == 0)
    fresh = next_page.long() + need.flatten().long().cumsum(0).view(b, h) - 1
    col = (slot // page).clamp(max=m - 1)
    pt = page_table.gather(-1, col[..., None])[..., 0]
    pt = torch.where(need, fresh.to(pt.dtype), pt)
    page_table.scatter_(-1, col[..., None], pt[..., None])
    next_page.add_(need.sum().to(next_page.dtype))
    lengths.copy_(slot + 1)
    run.copy_(torch.where(merge, run + 1, torch.ones_like(run)))
    ok = (pt.long() < k_pages.shape[0]) & (slot // page < m)
    idx = pt.long().clamp(max=k_pages.shape[0] - 1), (slot % page)
    kk, vv = (acc_k / acc_w[..., None]).to(k_pages.dtype), (acc_v / acc_w[..., None]).to(v_pages.dtype)
    k_pages[idx] = torch.where(ok[..., None], kk, k_pages[idx])
    v_pages[idx] = torch.where(ok[..., None], vv, v_pages[idx])
    return merge


def paged_decode_reference(q, k_pages, v_pages, page_table, lengths, scale: float | None = None) -> torch.Tensor:
    """One query token per head over the ragged paged caches: gather pages, mask past ``lengths``, attend.

    ``q [B, H_q, D]`` (``H_q`` a multiple of the cache's ``H``); returns ``[B, H_q, D]``.
    """
    b, h, _ = page_table.shape
    page, d = k_pages.shape[1:]
    n = max(1, math.ceil(int(lengths.max()) / page))
    pt = page_table[..., :n].long().clamp(0, k_pages.shape[0] - 1)
    k = k_pages[pt].reshape(b, h, n * page, d)
    v = v_pages[pt].reshape(b, h, n * page, d)
    mask = torch.arange(n * page, device=q.device) < lengths[..., None]
    mask = mask.repeat_interleave(q.shape[1] // h, 1)[:, :, None, :]
    return attention(q[:, :, None], k, v, causal=False, mask=mask, scale=scale, backend="math")[:, :, 0]


if triton is not None:

    @triton.jit
    def _update_kernel(k_pages, v_pages, page_table, lengths, run, acc_k, acc_v, acc_w, next_page, merged,
                       k, v, alpha_logit, omega, n_pages, max_pages, D, window,
                       PAGE: tl.constexpr, BLOCK_D: tl.constexpr):
        bh = tl.program_id(0)
        d = tl.arange(0, BLOCK_D)
        dm = d < D
        length = tl.load(lengths + bh)
        r = tl.load(run + bh)
        merge = (tl.load(alpha_logit + bh) > 0) & (r < window) & (length > 0)
        w = tl.load(omega + bh).to(tl.float32)
        keep = merge.to(tl.float32)
        kx = tl.load(k + bh * D + d, mask=dm, other=0.0).to(tl.float32)
        vx = tl.load(v + bh * D + d, mask=dm, other=0.0).to(tl.float32)
        ak = keep * tl.load(acc_k + bh * D + d, mask=dm, other=0.0) + w * kx
        av = keep * tl.load(acc_v + bh * D + d, mask=dm, other=0.0) + w * vx
        aw = keep * tl.load(acc_w + bh) + w
        slot = tl.where(merge, length - 1, length)
        need = (keep == 0.0) & (slot % PAGE == 0)
        col = slot // PAGE
        in_table = col < max_pages
        fresh = tl.atomic_add(next_page, 1, mask=need & in_table)
        old = tl.load(page_table + bh * max_pages + col, mask=in_table & (need == 0), other=0)
        pg = tl.where(need, fresh, old)
        tl.store(page_table + bh * max_pages + col, pg, mask=need & in_table)
        # one vector comparison (the interpreter mis-types a vector & scalar mask)
        ok = d < tl.where(in_table & (pg < n_pages), D, 0)
        off = pg.to(tl.int64) * PAGE * D + (slot % PAGE) * D + d
        tl.store(k_pages + off, (ak / aw).to(k_pages.dtype.element_ty), mask=ok)
        tl.store(v_pages + off, (av / aw).to(v_pages.dtype.element_ty), mask=ok)
        tl.store(acc_k + bh * D + d, ak, mask=dm)
        tl.store(acc_v + bh * D + d, av, mask=dm)
        tl.store(acc_w + bh, aw)
        tl.store(lengths + bh, slot + 1)
        tl.store(run + bh, tl.where(merge, r + 1, 1))
        tl.store(merged + bh, merge.to(tl.int8))

    @triton.jit
    def _decode_kernel(q, k_pages, v_pages, page_table, lengths, m_out, l_out, acc_out, out, scale,
                       G, D, max_pages, n_splits,
                       PAGE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_D: tl.constexpr,
                       IEEE: tl.constexpr, ONE_SPLIT: tl.constexpr):
        # Tiles of BLOCK_N slots, independent of the page size: each row looks up its own page, so small pages
        # (little padding per head) still feed the tensor cores whole tiles.
        bh = tl.program_id(0)
        s = tl.program_id(1)
        g = tl.arange(0, BLOCK_G)
        d = tl.arange(0, BLOCK_D)
        n = tl.arange(0, BLOCK_N)
        gm, dm = g < G, d < D
        qt = tl.load(q + bh * G * D + g[:, None] * D + d[None, :], mask=gm[:, None] & dm[None, :], other=0.0)
        qt = (qt.to(tl.float32) * scale).to(k_pages.dtype.element_ty)
        length = tl.load(lengths + bh)
        per_split = tl.cdiv(tl.cdiv(max_pages * PAGE, BLOCK_N), n_splits)
        t0 = s * per_split
        t1 = tl.minimum(t0 + per_split, tl.cdiv(length, BLOCK_N))
        m_i = tl.full([BLOCK_G], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_G], tl.float32)
        acc = tl.zeros([BLOCK_G, BLOCK_D], tl.float32)
        for t in range(t0, t1):
            slot = t * BLOCK_N + n
            valid = slot < length
            pg = tl.load(page_table + bh * max_pages + slot // PAGE, mask=valid, other=0).to(tl.int64)
            off = pg[:, None] * (PAGE * D) + (slot % PAGE)[:, None] * D + d[None, :]
            kv_mask = valid[:, None] & dm[None, :]  # rows past the head's length are never read
            kt = tl.load(k_pages + off, mask=kv_mask, other=0.0)
            if IEEE:
                sc = tl.dot(qt, tl.trans(kt), input_precision="ieee")
            else:
                sc = tl.dot(qt, tl.trans(kt))
            sc = tl.where(valid[None, :], sc, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(sc, 1))
            corr = tl.exp(m_i - m_new)
            pexp = tl.exp(sc - m_new[:, None])
            l_i = l_i * corr + tl.sum(pexp, 1)
            vt = tl.load(v_pages + off, mask=kv_mask, other=0.0)
            if IEEE:
                pv = tl.dot(pexp.to(vt.dtype), vt, input_precision="ieee")
            else:
                pv = tl.dot(pexp.to(vt.dtype), vt)
            acc = acc * corr[:, None] + pv
            m_i = m_new
        if ONE_SPLIT:  # the whole head in one program: normalise here, no partial states to merge
            o = acc / l_i[:, None]
            tl.store(out + bh * G * D + g[:, None] * D + d[None, :], o.to(out.dtype.element_ty),
                     mask=gm[:, None] & dm[None, :])
        else:
            row = (bh * n_splits + s) * BLOCK_G + g
            tl.store(m_out + row, m_i)
            tl.store(l_out + row, l_i)
            tl.store(acc_out + row[:, None] * BLOCK_D + d[None, :], acc)

    # Settings tried by the autotuned decode (CUDA only): tile length x warps x pipeline stages. Keyed by everything
    # that changes the best choice: group size, head dim, page size, cache capacity and the split count.
    DECODE_CONFIGS = [triton.Config({"BLOCK_N": bn}, num_warps=w, num_stages=st)
                      for bn, w, st in ((64, 4, 2), (64, 4, 3), (128, 4, 2), (128, 4, 3), (128, 8, 3), (256, 8, 2))]
    _decode_tuned = triton.autotune(DECODE_CONFIGS, key=["G", "D", "max_pages", "n_splits", "PAGE"])(_decode_kernel)


def _need_triton():
    if triton is None:
        raise RuntimeError("the Triton DMC kernels need the 'triton' package; use impl='reference'")


def dmc_update_triton(k_pages, v_pages, page_table, lengths, run, acc_k, acc_v, acc_w, next_page,
                      k, v, alpha_logit, omega, window: int) -> torch.Tensor:
    """Triton version of :func:`dmc_update_reference` (one program per head; pages claimed by atomic add)."""
    _need_triton()
    b, h, m = page_table.shape
    d = k.shape[-1]
    merged = torch.empty(b, h, dtype=torch.int8, device=k.device)
    _update_kernel[(b * h,)](k_pages, v_pages, page_table, lengths, run, acc_k, acc_v, acc_w, next_page, merged,
                             k.contiguous(), v.contiguous(), alpha_logit.float().contiguous(),
                             omega.float().contiguous(), k_pages.shape[0], m, d, window,
                             PAGE=k_pages.shape[1], BLOCK_D=triton.next_power_of_2(d))
    return merged.bool()


def _num_splits(programs: int, max_tiles: int, device) -> int:
    sms = sm_count(device)
    return max(1, min(max_tiles, math.ceil(2 * sms / programs)))


def paged_decode_triton(q, k_pages, v_pages, page_table, lengths, scale: float | None = None,
                        n_splits: int | None = None, block_n: int | None = None) -> torch.Tensor:
    """Triton version of :func:`paged_decode_reference`: one program per (key head, split of its slots) handles
    the whole GQA group (split-K flash decoding) in tiles of ``block_n`` slots, whatever the page size; partial
    softmax states are combined in PyTorch. With one split (large batches) the kernel normalises and writes the
    output itself. ``block_n=None``: autotuned over :data:`DECODE_CONFIGS` on CUDA (first call per shape key
    benchmarks them), 64 elsewhere."""
    _need_triton()
    b, hq, d = q.shape
    _, h, m = page_table.shape
    page = k_pages.shape[1]
    g = hq // h
    scale = scale if scale is not None else 1.0 / math.sqrt(d)
    if block_n is not None and (block_n < 16 or block_n & (block_n - 1)):
        raise ValueError(f"block_n={block_n} must be a power of two >= 16")
    tune = block_n is None and q.is_cuda
    splits = n_splits or _num_splits(b * h, math.ceil(m * page / 256), q.device)
    bg, bd = max(16, triton.next_power_of_2(g)), max(16, triton.next_power_of_2(d))
    one = splits == 1
    parts = (b * h, 1, 1) if one else (b * h, splits, bg)  # unused placeholders when the kernel normalises
    m_out = torch.empty(parts, dtype=torch.float32, device=q.device)
    l_out = torch.empty_like(m_out)
    acc = torch.empty(*parts, 1 if one else bd, dtype=torch.float32, device=q.device)
    out = torch.empty(b, hq, d, dtype=q.dtype, device=q.device)
    args = (q.to(k_pages.dtype).contiguous(), k_pages, v_pages, page_table, lengths, m_out, l_out, acc, out, scale,
            g, d, m, splits)
    consts = dict(PAGE=page, BLOCK_G=bg, BLOCK_D=bd, IEEE=k_pages.dtype == torch.float32, ONE_SPLIT=one)
    if tune:
        _decode_tuned[(b * h, splits)](*args, **consts)
    else:
        _decode_kernel[(b * h, splits)](*args, BLOCK_N=block_n or 64, **consts)
    if one:
        return out
    top = m_out.amax(1, keepdim=True)
    wgt = torch.where(m_out == float("-inf"), 0.0, torch.exp(m_out - top))
    out = (acc * wgt[..., None]).sum(1) / (l_out * wgt).sum(1)[..., None]
    return out[:, :g, :d].reshape(b, hq, d).to(q.dtype)
