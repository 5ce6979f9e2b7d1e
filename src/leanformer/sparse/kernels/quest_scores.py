"""Quest's page scores: a plain-PyTorch reference (``page_scores``) and one Triton launch (``page_scores_triton``),
same signature.

``q [B, H_q, 1, D]``; page metadata ``kmin, kmax [B, H_kv, P, D]`` (the element-wise minimum and maximum of each
page's keys, in the cache dtype). The score of page ``p`` for query head ``h`` is the upper bound
``sum_d max(q_d min_pd, q_d max_pd)`` of ``q_h``'s dot products with the page's keys; with ``share_gqa`` it is
summed over the GQA group of each key head (``[B, H_kv, P]``), else one row per query head (``[B, H_q, P]``).
Scores are fp32.

Page summaries may also be int8 with one fp32 scale per page and head (``kmin_scale``, ``kmax_scale``
``[B, H_kv, P]``; :func:`quantize_pages`): half the bytes of bf16 a step reads, rounded outward (the minimum down,
the maximum up) so the score stays an upper bound up to rounding.

:func:`select_pages_triton` scores the pages *and* picks the top ``k`` of each selection head in one launch: one
program per (batch x key head, block of pages) writes its scores, and the last program of a key head to finish
(an atomic count) bisects for the ``k``-th largest score of each of its selection heads and writes the winners, in
page order (with :data:`COMPACT_STEPS` > 0 the bisection finishes on the few scores left between its bounds after
that many counts over the row). :func:`select_pages_reference` is the same with :func:`page_scores` and a stable
sort.
"""

from __future__ import annotations

import functools

import torch

from leanformer.sparse.kernels.tile_attention import need_triton, triton


def page_scores(q: torch.Tensor, kmin: torch.Tensor, kmax: torch.Tensor, share_gqa: bool,
                kmin_scale: torch.Tensor | None = None, kmax_scale: torch.Tensor | None = None) -> torch.Tensor:
    """The reference: the bound as two matrix products, ``relu(q) . max + min(q, 0) . min`` (equal to the
    element-wise form since ``min <= max``), each in the cache dtype (no fp32 copy of the metadata; scores only
    rank pages). int8 summaries (with their scales) are scaled to fp32 first."""
    if kmin_scale is not None:
        kmin, kmax = kmin.float() * kmin_scale[..., None], kmax.float() * kmax_scale[..., None]
        q = q.float()
    b, hq, _, d = q.shape
    hk = kmin.shape[1]
    qg = q.reshape(b, hk, hq // hk, d)
    s = torch.matmul(qg.clamp(min=0), kmax.transpose(-1, -2)).float()
    s = s + torch.matmul(qg.clamp(max=0), kmin.transpose(-1, -2)).float()  # [B, H_kv, G, P]
    return s.sum(2) if share_gqa else s.reshape(b, hq, -1)


def quantize_pages(kmin: torch.Tensor, kmax: torch.Tensor):
    """int8 page summaries ``(kmin8, kmax8, kmin_scale, kmax_scale)``: each page's minimum and maximum keys divided
    by their own absolute maximum / 127 (fp32 scales ``[..., P]``), the minimum rounded down and the maximum up."""
    tiny = torch.finfo(torch.float32).tiny
    smin = kmin.float().abs().amax(-1).clamp_min(tiny) / 127
    smax = kmax.float().abs().amax(-1).clamp_min(tiny) / 127
    kmin8 = torch.floor(kmin.float() / smin[..., None]).clamp(-127, 127).to(torch.int8)
    kmax8 = torch.ceil(kmax.float() / smax[..., None]).clamp(-127, 127).to(torch.int8)
    return kmin8, kmax8, smin, smax


def select_pages_reference(q, kmin, kmax, k: int, share_gqa: bool, kmin_scale=None, kmax_scale=None, lens=None,
                           page_size: int = 0):
    """The ``k`` best pages by :func:`page_scores`, ``[B, H_s, k]`` int32 in page order (equal scores: the lower
    page), as :func:`select_pages_triton` returns them. With ``lens [B, H_kv]`` (int32, on the device) and
    ``page_size``, only the complete pages before each head's current one, ``(lens - 1) // page_size``, are
    candidates; where fewer than ``k`` exist the list ends in ``-1``."""
    return select_from_scores(page_scores(q, kmin, kmax, share_gqa, kmin_scale, kmax_scale), k, lens, page_size)


def select_from_scores(s, k: int, lens=None, page_size: int = 0):
    """:func:`select_pages_reference`'s choice from given scores ``s [B, H_s, P]`` (e.g. the ones
    :func:`select_pages_triton` returns with ``return_scores``: its choice must be exactly this)."""
    from leanformer.sparse.kernels.block_select import topk_rows

    if lens is None:
        return topk_rows(s, k)
    cur = (lens.long() - 1) // page_size
    if cur.shape[1] != s.shape[1]:  # one selection row per query head: the key head's length for its group
        cur = cur.repeat_interleave(s.shape[1] // cur.shape[1], 1)
    cand = torch.arange(s.shape[-1], device=s.device) < cur[..., None]
    top = topk_rows(torch.where(cand, s, float("-inf")), k)
    return torch.where(torch.gather(cand, -1, top.long()), top, -1)


if triton is not None:
    import triton.language as tl

    from leanformer.sparse.kernels.block_select import (
        kth_largest_key,
        kth_largest_key_compact,
        kth_largest_key_split,
        order_keys,
    )

    @triton.jit
    def _block_scores(Q, KMIN, KMAX, SMIN, SMAX, b, h, offs_p, sqb, sqh, snb, snh, snp, sxb, sxh, sxp, ssb, ssh, G, P,
                      QUANT: tl.constexpr, PREC: tl.constexpr, BLOCK_G: tl.constexpr, D: tl.constexpr):
        """Scores ``[BLOCK_G, BLOCK_P]`` of key head ``h``'s query rows (padding rows 0) on pages ``offs_p``."""
        offs_g = tl.arange(0, BLOCK_G)
        offs_d = tl.arange(0, D)
        pm = offs_p < P
        q = tl.load(Q + b * sqb + (h * G + offs_g)[:, None] * sqh + offs_d[None, :], mask=offs_g[:, None] < G,
                    other=0.0)
        mn = tl.load(KMIN + b * snb + h * snh + offs_p[:, None] * snp + offs_d[None, :], mask=pm[:, None], other=0)
        mx = tl.load(KMAX + b * sxb + h * sxh + offs_p[:, None] * sxp + offs_d[None, :], mask=pm[:, None], other=0)
        zero = tl.zeros_like(q)
        if QUANT:  # int8 summaries: exact in the query's dtype; the pages' scales multiply the products
            ty = Q.dtype.element_ty
            s = tl.dot(tl.maximum(q, zero).to(ty), tl.trans(mx.to(ty)), input_precision=PREC)
            s = s * tl.load(SMAX + b * ssb + h * ssh + offs_p, mask=pm, other=0.0)[None, :]
            s2 = tl.dot(tl.minimum(q, zero).to(ty), tl.trans(mn.to(ty)), input_precision=PREC)
            s += s2 * tl.load(SMIN + b * ssb + h * ssh + offs_p, mask=pm, other=0.0)[None, :]
        else:
            # the compiler promotes bf16 min/max to fp32 (the interpreter does not): cast back for tl.dot
            ty = KMAX.dtype.element_ty
            s = tl.dot(tl.maximum(q, zero).to(ty), tl.trans(mx), input_precision=PREC)
            s += tl.dot(tl.minimum(q, zero).to(ty), tl.trans(mn), input_precision=PREC)
        return s

    @triton.jit
    def _page_scores_fwd(Q, KMIN, KMAX, SMIN, SMAX, OUT, sqb, sqh, snb, snh, snp, sxb, sxh, sxp, ssb, ssh, HK, G, P,
                         SHARE: tl.constexpr, QUANT: tl.constexpr, PREC: tl.constexpr, BLOCK_G: tl.constexpr,
                         BLOCK_P: tl.constexpr, D: tl.constexpr):
        """One program per (batch x key head, block of pages): the group's query rows are loaded once, each page's
        min and max once, for all ``G`` rows."""
        pid = tl.program_id(0)
        offs_p = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
        s = _block_scores(Q, KMIN, KMAX, SMIN, SMAX, pid // HK, pid % HK, offs_p, sqb, sqh, snb, snh, snp, sxb, sxh,
                          sxp, ssb, ssh, G, P, QUANT, PREC, BLOCK_G, D)  # [BLOCK_G, BLOCK_P]; padded rows 0
        offs_g = tl.arange(0, BLOCK_G)
        if SHARE:
            tl.store(OUT + pid * P + offs_p, tl.sum(s, 0), mask=offs_p < P)
        else:
            rows = pid * G + offs_g  # query head h * G + g of batch b
            tl.store(OUT + rows[:, None] * P + offs_p[None, :], s, mask=(offs_g[:, None] < G) & (offs_p[None, :] < P))

    @triton.jit
    def _row_keys(S, START, P, LIMIT, N: tl.constexpr):
        """Order-preserving int32 keys of the fp32 scores ``S[START:START + N]`` (read past L1; pages from ``P``
        or ``LIMIT`` on invalid), their page ids and validity."""
        offs = START + tl.arange(0, N)
        valid = (offs < P) & (offs < LIMIT)
        x = tl.load(S + offs, mask=offs < P, other=0.0, cache_modifier=".cg")
        return order_keys(x, valid), offs, valid

    @triton.jit
    def _write_top(OUT, key, offs, valid, thr, need, before):
        """Writes the valid pages ``offs`` that are among the top: every key above ``thr`` and the first ``need``
        keys equal to it, at positions after ``before`` winners (an invalid page taken keeps its position: the
        list's ``-1``). Returns the winners and equal keys it took."""
        gt = key > thr
        eq = key == thr
        take = gt | (eq & (tl.cumsum(eq.to(tl.int32), 0) <= need))
        pos = before + tl.cumsum(take.to(tl.int32), 0) - 1
        tl.store(OUT + pos, offs, mask=take & valid)
        return tl.sum(take.to(tl.int32), 0), tl.sum((take & eq).to(tl.int32), 0)

    @triton.jit
    def _select_fwd(Q, KMIN, KMAX, SMIN, SMAX, SCORES, CNT, LENS, OUT, SCR, sqb, sqh, snb, snh, snp, sxb, sxh, sxp,
                    ssb, ssh, slb, slh, HK, G, P, K, NBLK, NROWS, SHARE: tl.constexpr, QUANT: tl.constexpr,
                    PREC: tl.constexpr, PAGE: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_P: tl.constexpr,
                    D: tl.constexpr, NP: tl.constexpr, NT: tl.constexpr, KP: tl.constexpr, STEPS: tl.constexpr,
                    CAP: tl.constexpr):
        """:func:`_page_scores_fwd`, then the last of a key head's ``NBLK`` programs picks the top ``K`` pages of
        each of its ``NROWS`` selection rows (one if ``SHARE``, else ``G``) and resets the head's count for the
        next step. ``PAGE > 0``: candidates are the pages before ``(LENS[b, h] - 1) // PAGE``, the list padded
        with ``-1`` where there are fewer. A row is ``NP`` pages in registers, and with ``NT > 0`` the ``P - NP``
        pages past them a second tensor of ``NT``. ``STEPS > 0``: the top-k by
        :func:`kth_largest_key_compact` (``STEPS`` counts over the row, then at most ``CAP`` candidates in
        ``SCR``, ``CAP`` int32 a selection row), else the 32-step bisection over the row."""
        pid = tl.program_id(0)
        offs_p = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
        s = _block_scores(Q, KMIN, KMAX, SMIN, SMAX, pid // HK, pid % HK, offs_p, sqb, sqh, snb, snh, snp, sxb, sxh,
                          sxp, ssb, ssh, G, P, QUANT, PREC, BLOCK_G, D)
        offs_g = tl.arange(0, BLOCK_G)
        if SHARE:
            tl.store(SCORES + pid * P + offs_p, tl.sum(s, 0), mask=offs_p < P)
        else:
            rows = pid * G + offs_g
            tl.store(SCORES + rows[:, None] * P + offs_p[None, :], s,
                     mask=(offs_g[:, None] < G) & (offs_p[None, :] < P))
        # every thread's scores are written before the count says so (the count's release makes them visible)
        tl.debug_barrier()
        done = tl.atomic_add(CNT + pid, 1, sem="acq_rel")
        if done == NBLK - 1:
            limit = P
            if PAGE > 0:
                limit = (tl.load(LENS + (pid // HK) * slb + (pid % HK) * slh) - 1) // PAGE
            for r in range(0, NROWS):
                row = pid * NROWS + r
                if PAGE > 0:  # fewer candidates than K: the list ends in -1 (written before the winners)
                    offs_k = tl.arange(0, KP)
                    tl.store(OUT + row * K + offs_k, tl.full([KP], -1, tl.int32), mask=offs_k < K)
                    tl.debug_barrier()
                key, offs, valid = _row_keys(SCORES + row * P, 0, P, limit, NP)
                if NT > 0:  # pages NP..P-1: a short tail, not a row padded to twice NP
                    tail, offs_t, valid_t = _row_keys(SCORES + row * P, NP, P, limit, NT)
                    if STEPS > 0:
                        thr = kth_largest_key_compact(key, tail, K, SCR + row * CAP, True, STEPS, CAP)
                    else:
                        thr = kth_largest_key_split(key, tail, K)
                    need = K - tl.sum((key > thr).to(tl.int32), 0) - tl.sum((tail > thr).to(tl.int32), 0)
                    n, n_eq = _write_top(OUT + row * K, key, offs, valid, thr, need, 0)
                    _write_top(OUT + row * K, tail, offs_t, valid_t, thr, need - n_eq, n)
                else:
                    if STEPS > 0:
                        thr = kth_largest_key_compact(key, key, K, SCR + row * CAP, False, STEPS, CAP)
                    else:
                        thr = kth_largest_key(key, K)
                    _write_top(OUT + row * K, key, offs, valid, thr, K - tl.sum((key > thr).to(tl.int32), 0), 0)
            tl.atomic_xchg(CNT + pid, 0)


def _meta_args(q, kmin, kmax, kmin_scale, kmax_scale):
    """The page summaries as the kernels take them (unit last stride) and their scale pointers / strides."""
    q, kmin, kmax = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, kmin, kmax))
    quant = kmin_scale is not None
    if quant:
        if kmin.dtype != torch.int8 or kmin_scale.stride() != kmax_scale.stride():
            raise ValueError("scaled page summaries must be int8 with scales of one layout")
        smin, smax = kmin_scale, kmax_scale
    else:
        smin = smax = kmin  # never read
    sstr = (smin.stride(0), smin.stride(1)) if quant else (0, 0)
    strides = (q.stride(0), q.stride(1), kmin.stride(0), kmin.stride(1), kmin.stride(2), kmax.stride(0),
               kmax.stride(1), kmax.stride(2), *sstr)
    # fp32 queries: exact products (tf32 would round the inputs to 10 bits)
    prec = "ieee" if q.dtype == torch.float32 else "tf32"
    return q, kmin, kmax, smin, smax, strides, quant, prec


def page_scores_triton(q: torch.Tensor, kmin: torch.Tensor, kmax: torch.Tensor, share_gqa: bool,
                       block_p: int = 64, kmin_scale: torch.Tensor | None = None,
                       kmax_scale: torch.Tensor | None = None) -> torch.Tensor:
    """The same scores in one launch (grid ``B H_kv x ceil(P / block_p)``), products accumulated in fp32 (the
    reference rounds each product to the cache dtype). ``D`` must be a power of two >= 16; ``kmin``/``kmax`` may be
    views over the pages (any strides but a unit last one); int8 summaries take their scales."""
    need_triton(q, "page_scores_triton", "page_scores")
    b, hq, _, d = q.shape
    hk, p = kmin.shape[1], kmin.shape[2]
    g = hq // hk
    q, kmin, kmax, smin, smax, strides, quant, prec = _meta_args(q, kmin, kmax, kmin_scale, kmax_scale)
    out = torch.empty(b, hk if share_gqa else hq, p, device=q.device, dtype=torch.float32)
    if p == 0:
        return out
    _page_scores_fwd[(b * hk, triton.cdiv(p, block_p))](
        q, kmin, kmax, smin, smax, out, *strides, hk, g, p, SHARE=share_gqa, QUANT=quant, PREC=prec,
        BLOCK_G=max(16, 1 << (g - 1).bit_length()), BLOCK_P=block_p, D=d, num_warps=4)
    return out


MAX_SELECT_PAGES = 16384  # pages a selection row may hold: the row sits in registers while it is selected


@functools.cache
def _counts(device: torch.device, n: int) -> torch.Tensor:
    """Zeroed int32 counts, one per (batch x key head), kept per device: each launch leaves them at zero (its last
    program resets its head's), so a CUDA graph can replay the step. Allocate (one first call) outside a capture.
    Never evicted: a captured graph keeps the address, so a freed buffer would be replayed into (sizes are powers of
    two, a few per device)."""
    return torch.zeros(n, dtype=torch.int32, device=device)


def counts_for(device: torch.device, n: int) -> torch.Tensor:
    """:func:`_counts` with at least ``n`` entries (sizes round up to a power of two: few buffers)."""
    return _counts(device, max(64, 1 << (n - 1).bit_length()))


MAX_TAIL = 64  # pages past a power of two that a selection row keeps as a short second tensor

# the top-k after the page scores: COMPACT_STEPS > 0 counts the whole row that many times (a bisection between its
# smallest and largest key), then finishes on the keys left between the bounds where at most COMPACT_CAP are
# (block_select.kth_largest_key_compact); 0 bisects over the whole row 32 times
COMPACT_STEPS = 0
COMPACT_CAP = 512


def row_split(p: int, max_tail: int = MAX_TAIL) -> tuple[int, int]:
    """How :func:`select_pages_triton` holds a row of ``p`` pages: ``(NP, NT)``, a power of two ``NP`` and, where
    ``p`` passes it by at most ``max_tail`` pages and an eighth of ``NP``, the tail's power of two ``NT`` (else
    ``NT = 0`` and ``NP`` covers the row). A cache with a generation's headroom is a few pages past a power of two
    (2,053 pages for a 32K prompt and 64 new tokens): padded, its row doubles, and so does each bisection step's
    count."""
    np_ = max(16, 1 << (p - 1).bit_length())
    tail = p - np_ // 2
    if np_ > 16 and tail <= min(max_tail, np_ // 16):
        return np_ // 2, max(2, 1 << (tail - 1).bit_length())
    return np_, 0


def select_warps(np_: int, heads: int) -> int:
    """:func:`select_pages_triton`'s default warps for rows padded to ``np_`` pages and ``heads`` (batch x key
    head) finishing programs. Few heads (a batch-1 step): the tail after the page scores is latency on a few SMs and
    follows the pages each thread counts, 32 times over, so ~16 pages a thread (4 to 8 warps). Many heads: the page
    scores dominate and 4 warps a program score fastest. On one H100 (benchmarks/bench_quest_select.py, 4 key heads,
    results/quest_select-20261206T125118Z.json) the whole launch took, at batch 1, 16.5 / 16.9 us with 4 / 8 warps at
    2,048 pages and 41.7 / 30.9 us at 8,192; at batch 16, 42.5 / 49.4 us and 145.9 / 153.3 us. Sixteen warps were
    slower everywhere (results/quest_select-20261206T134254Z.json: 55.0 against 50.8 us for a row of 16,384 at
    batch 1)."""
    if heads > 16:
        return 4
    return max(4, min(8, np_ // 512))


def select_pages_triton(q, kmin, kmax, k: int, share_gqa: bool, kmin_scale=None, kmax_scale=None,
                        block_p: int = 64, return_scores: bool = False, lens=None, page_size: int = 0,
                        num_warps: int | None = None, max_tail: int = MAX_TAIL, compact_steps: int | None = None,
                        compact_cap: int | None = None):
    """:func:`select_pages_reference` in one launch: ``[B, H_s, k]`` int32 page ids in page order (and, with
    ``return_scores``, the ``[B H_s, P]`` scores it ranked), ``lens``/``page_size`` as there (read on the device:
    the launch can sit in a CUDA graph replayed as the cache grows). Rows of up to :data:`MAX_SELECT_PAGES` pages
    (a 256K-token cache at 16-token pages). ``num_warps``: the launch's warps (default :func:`select_warps`); fewer
    warps hold more of a row per thread (the 32-step bisection's count is one block reduction a step). ``max_tail``:
    the most pages past a power of two a row holds as a short tail (:func:`row_split`; 0: rows padded whole).
    ``compact_steps`` / ``compact_cap``: the top-k's counts over the whole row before it finishes on the candidates
    left, and how many it finishes on (defaults :data:`COMPACT_STEPS`, :data:`COMPACT_CAP`; 0 steps: the 32-step
    bisection over the row); the choice is the same either way."""
    if num_warps not in (None, 1, 2, 4, 8, 16):
        raise ValueError(f"num_warps={num_warps}: choose 1, 2, 4, 8 or 16")
    need_triton(q, "select_pages_triton", "select_pages_reference")
    b, hq, _, d = q.shape
    hk, p = kmin.shape[1], kmin.shape[2]
    if not 0 < k <= p:
        raise ValueError(f"k={k} must be between 1 and the number of pages {p}")
    if p > MAX_SELECT_PAGES:
        raise ValueError(f"{p} pages are more than the kernel's {MAX_SELECT_PAGES}; use select_pages_reference")
    if (lens is None) != (page_size == 0):
        raise ValueError("lens and page_size come together")
    steps = COMPACT_STEPS if compact_steps is None else compact_steps
    cap = COMPACT_CAP if compact_cap is None else compact_cap
    if not 0 <= steps < 32:
        raise ValueError(f"compact_steps={steps}: choose 0 (no compaction) to 31")
    if cap < 16 or cap & (cap - 1):
        raise ValueError(f"compact_cap={cap}: choose a power of two of at least 16")
    np_, nt = row_split(p, max_tail)
    warps = select_warps(np_, b * hk) if num_warps is None else num_warps
    g = hq // hk
    hs = hk if share_gqa else hq
    q, kmin, kmax, smin, smax, strides, quant, prec = _meta_args(q, kmin, kmax, kmin_scale, kmax_scale)
    scores = torch.empty(b * hs, p, device=q.device, dtype=torch.float32)
    out = torch.empty(b, hs, k, device=q.device, dtype=torch.int32)
    scratch = torch.empty(b * hs, cap if steps else 1, device=q.device, dtype=torch.int32)
    nblk = triton.cdiv(p, block_p)
    lp = (lens.stride(0), lens.stride(1)) if lens is not None else (0, 0)
    _select_fwd[(b * hk, nblk)](
        q, kmin, kmax, smin, smax, scores, counts_for(q.device, b * hk), scores if lens is None else lens, out,
        scratch, *strides, *lp, hk, g, p, k, nblk, hs // hk, SHARE=share_gqa, QUANT=quant, PREC=prec, PAGE=page_size,
        BLOCK_G=max(16, 1 << (g - 1).bit_length()), BLOCK_P=block_p, D=d, NP=np_, NT=nt,
        KP=max(16, 1 << (k - 1).bit_length()), STEPS=steps, CAP=cap if steps else 16, num_warps=warps)
    return (out, scores.view(b, hs, p)) if return_scores else out
