"""One decode step over selected cache positions: a fused Triton kernel and a gather-then-SDPA path (both read only
the kept keys), and the dense masked reference (reads the whole cache), all with the same signature.

``q [B, H_q, 1, D]``; cache ``k, v [B, H_kv, L, D]``; ``idx [B, H_s, N]`` int64 positions and ``valid [B, H_s, N]``
bool (or ``None``: all valid; no host synchronisation happens, so a step can be captured in a CUDA graph), where
``H_s`` is ``H_kv`` (one selection per key head, shared by its GQA group) or ``H_q`` (one per query head).
Returns ``[B, H_q, 1, D]``. Duplicate valid positions are not allowed (they would be counted twice).

Page-granular form (Quest): ``pages [B, H_s, P]`` int64 page ids, ``page_size``, and an optional ``last_page`` id
that every head reads after its ``pages`` (so the caller need not concatenate it); page ``p`` holds positions
``p * page_size + [0, page_size)``, those ``>= L`` (the last, partial page) are skipped. The kernel turns page ids
into positions itself: no expanded ``idx`` is built. Page ids must be distinct and below ``ceil(L / page_size)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from leanformer.nn.attention import attention
from leanformer.nn.gpu import sm_count
from leanformer.sparse.kernels.tile_attention import need_triton, triton

if triton is not None:
    import triton.language as tl

    @triton.jit
    def gathered_step(q, k_base, v_base, idx, ok, skt, svt, offs_d, acc, l_i, m_i, qk_scale):
        """One online-softmax step of decode over gathered positions: keys and values at ``idx`` (masked by ``ok``)
        of one head (``k_base``/``v_base``), for the ``[BLOCK_G, D]`` query rows ``q``; exp2 with the scale
        folded in. Returns the updated ``(acc, l_i, m_i)``. Shared by every split-K decode kernel."""
        kt = tl.load(k_base + idx[:, None] * skt + offs_d[None, :], mask=ok[:, None], other=0.0)
        s = tl.dot(q, tl.trans(kt)) * qk_scale
        s = tl.where(ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp2(s - m_safe[:, None])
        alpha = tl.exp2(m_i - m_safe)
        vt = tl.load(v_base + idx[:, None] * svt + offs_d[None, :], mask=ok[:, None], other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(vt.dtype), vt)
        l_i = l_i * alpha + tl.sum(p, 1)
        return acc, l_i, m_new

    @triton.jit
    def write_split(OUT, OP, MP, LP, acc, l_i, m_i, pid, sp, G, NSPLIT, offs_g, offs_d, gm, BLOCK_G: tl.constexpr,
                    D: tl.constexpr, ONE_SPLIT: tl.constexpr):
        """A split's result: the normalised output when it is the only split, else its partial ``(acc, m, l)`` for
        the merge — only the ``G`` real query rows (the padding rows of the dot tile are never merged)."""
        if ONE_SPLIT:
            out = acc / l_i[:, None]
            tl.store(OUT + (pid * G + offs_g)[:, None] * D + offs_d[None, :], out.to(OUT.dtype.element_ty),
                     mask=gm[:, None])
        else:
            row = (pid * NSPLIT + sp) * BLOCK_G + offs_g
            tl.store(OP + row[:, None] * D + offs_d[None, :], acc, mask=gm[:, None])
            tl.store(MP + row, m_i, mask=gm)
            tl.store(LP + row, l_i, mask=gm)

    @triton.jit
    def _gather_decode_fwd(Q, K, V, IDX, VALID, OP, MP, LP, OUT, qk_scale, sqb, sqh, skb, skh, skt, svb, svh, svt,
                           sib, sih, HS, G, KVDIV, N, LEN, CHUNK, NSPLIT, NP, LAST,
                           PAGE: tl.constexpr, HAS_VALID: tl.constexpr, ONE_SPLIT: tl.constexpr,
                           BLOCK_G: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr,
                           CNT=None, FUSED_MERGE: tl.constexpr = False, BLOCK_S: tl.constexpr = 16):
        """``PAGE == 0``: ``IDX`` holds ``N`` positions (``-1`` = skip), masked by ``VALID`` (same strides) when
        ``HAS_VALID``. ``PAGE > 0``: ``IDX`` holds ``NP`` page ids, then page ``LAST`` if ``N`` covers one more
        page; position = page * PAGE + offset. ``ONE_SPLIT``: the program owns all ``N`` positions and writes the
        normalised output itself (no merge launch). ``FUSED_MERGE``: the last split of a selection head to finish
        (an atomic count in ``CNT``) merges the head's splits itself, and resets the count (no merge launch
        either)."""
        pid = tl.program_id(0)
        sp = tl.program_id(1)
        b = pid // HS
        hs = pid % HS
        kvh = hs // KVDIV
        offs_g = tl.arange(0, BLOCK_G)
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, D)
        gm = offs_g < G
        q = tl.load(Q + b * sqb + (hs * G + offs_g)[:, None] * sqh + offs_d[None, :], mask=gm[:, None], other=0.0)
        m_i = tl.full([BLOCK_G], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_G], tl.float32)
        acc = tl.zeros([BLOCK_G, D], tl.float32)
        start = sp * CHUNK
        for n0 in range(start, start + CHUNK, BLOCK_N):
            offs = n0 + offs_n
            nm = offs < N
            if PAGE == 0:
                idx = tl.load(IDX + b * sib + hs * sih + offs, mask=nm, other=-1)
                if HAS_VALID:
                    nm = nm & tl.load(VALID + b * sib + hs * sih + offs, mask=nm, other=0).to(tl.int1)
            else:
                slot = offs // PAGE
                page = tl.load(IDX + b * sib + hs * sih + slot, mask=nm & (slot < NP), other=0)
                idx = tl.where(slot < NP, page, LAST) * PAGE + offs % PAGE
            ok = nm & (idx >= 0) & (idx < LEN)
            acc, l_i, m_i = gathered_step(q, K + b * skb + kvh * skh, V + b * svb + kvh * svh, idx, ok, skt, svt,
                                          offs_d, acc, l_i, m_i, qk_scale)
        write_split(OUT, OP, MP, LP, acc, l_i, m_i, pid, sp, G, NSPLIT, offs_g, offs_d, gm, BLOCK_G, D, ONE_SPLIT)
        if not ONE_SPLIT:
            if FUSED_MERGE:
                # every thread's partials are written before the count says so (its release makes them visible)
                tl.debug_barrier()
                if tl.atomic_add(CNT + pid, 1, sem="acq_rel") == NSPLIT - 1:
                    for g in range(0, G):
                        _merge_row(OP, MP, LP, OUT, pid, g, NSPLIT, G, BLOCK_G, BLOCK_S, D)
                    tl.atomic_xchg(CNT + pid, 0)

    @triton.jit
    def _merge_row(OP, MP, LP, OUT, r, g, NSPLIT, ROWS, BG, BLOCK_S: tl.constexpr, D: tl.constexpr):
        """Query row ``g`` of selection head ``r``: its splits' partials (read past L1: other programs wrote them
        in this launch), ``BLOCK_S`` at a time, merged by log-sum-exp."""
        offs_s = tl.arange(0, BLOCK_S)
        offs_d = tl.arange(0, D)
        m_run = tl.full((), float("-inf"), tl.float32)
        den = tl.zeros((), tl.float32)
        acc = tl.zeros([D], tl.float32)
        for s0 in range(0, NSPLIT, BLOCK_S):
            sm = s0 + offs_s < NSPLIT
            part = (r * NSPLIT + s0 + offs_s) * BG + g
            m = tl.load(MP + part, mask=sm, other=float("-inf"), cache_modifier=".cg")
            m_new = tl.maximum(m_run, tl.max(m, 0))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            w = tl.exp2(m - m_safe)
            alpha = tl.exp2(m_run - m_safe)
            o = tl.load(OP + part[:, None] * D + offs_d[None, :], mask=sm[:, None], other=0.0, cache_modifier=".cg")
            acc = acc * alpha + tl.sum(o * w[:, None], 0)
            den = den * alpha + tl.sum(tl.load(LP + part, mask=sm, other=0.0, cache_modifier=".cg") * w, 0)
            m_run = m_new
        tl.store(OUT + (r * ROWS + g) * D + offs_d, (acc / den).to(OUT.dtype.element_ty))

    @triton.jit
    def merge_splits(OP, MP, LP, OUT, NSPLIT, ROWS, BG, BLOCK_S: tl.constexpr, D: tl.constexpr):
        """One program per (selection head, query row): the splits' partial outputs merged by log-sum-exp (empty
        splits, ``m = -inf``, weigh nothing). Shared by every split-K decode kernel."""
        r = tl.program_id(0)
        g = tl.program_id(1)
        offs_s = tl.arange(0, BLOCK_S)
        offs_d = tl.arange(0, D)
        sm = offs_s < NSPLIT
        part = (r * NSPLIT + offs_s) * BG + g
        m = tl.load(MP + part, mask=sm, other=float("-inf"))
        den = tl.load(LP + part, mask=sm, other=0.0)
        m_max = tl.max(m, 0)
        w = tl.exp2(m - tl.where(m_max == float("-inf"), 0.0, m_max))
        o = tl.load(OP + part[:, None] * D + offs_d[None, :], mask=sm[:, None], other=0.0)
        out = tl.sum(o * w[:, None], 0) / tl.sum(den * w, 0)
        tl.store(OUT + (r * ROWS + g) * D + offs_d, out.to(OUT.dtype.element_ty))


# Split-K plan. A program holds two pipeline stages of a BLOCK_N x 128 bf16 K and V tile (2 x 32 KB of shared
# memory), so about three fit on an H200 SM (228 KB); the split count aims for PROGRAMS_PER_SM programs per SM, never
# below one block per split. Four (more than are resident at once) timed faster than three at both batch sizes on
# one H100 (bench_sparse_decode.py --kernel-settings, results/sparse_decode-20261207T144913Z.json: SnapKV at 1/16 of
# 128K, 0.0179 against 0.0187 ms at batch 1, 0.227 against 0.232 at batch 16; six: 0.0174 and 0.260). Batch 1,
# 8 KV heads, 8192 kept keys: 64 splits of 128 keys (512 programs on 132 SMs); batch 16: 4 splits of 2048 keys; a
# grid already full without splitting (batch 16 x 32 query-head selections) runs as one split with no merge launch.
BLOCK_N = 64
NUM_WARPS = 4
NUM_STAGES = 2
PROGRAMS_PER_SM = 4


def split_plan(heads: int, n: int, sms: int, block_n: int = BLOCK_N, min_split: int = 1) -> tuple[int, int]:
    """``(splits, chunk)`` for ``heads`` = batch x selection heads reading ``n`` positions each: ``chunk`` is a
    multiple of ``block_n``, every split holds at least one position (the last may be partial) and, where ``n``
    allows, at least ``min_split``."""
    blocks = max(1, math.ceil(n / block_n))
    nsplit = max(1, min(blocks, PROGRAMS_PER_SM * sms // max(heads, 1), math.ceil(n / min_split)))
    chunk = math.ceil(blocks / nsplit) * block_n
    return max(1, math.ceil(n / chunk)), chunk


def split_outputs(q: torch.Tensor, heads: int, rows: int, nsplit: int, block_g: int):
    """``(out, acc, m, l)`` of a split-K launch: the output ``[heads, rows, D]`` and, with several splits, the fp32
    partials the merge reads (one split writes the output itself: the partial slots are the output, untouched)."""
    d = q.shape[-1]
    out = torch.empty(heads, rows, d, device=q.device, dtype=q.dtype)
    if nsplit == 1:
        return out, out, out, out
    mp = torch.empty(heads * nsplit * block_g, device=q.device, dtype=torch.float32)
    return out, torch.empty(heads * nsplit * block_g, d, device=q.device, dtype=torch.float32), mp, torch.empty_like(mp)


# The split-K kernels' default merge (positions and pages alike). The last split of each head merging (one launch)
# made SnapKV's batch-1 step slower than a merge launch: 0.027 against 0.019 ms over a 128K cache at 1/16 (43 splits a
# head; the last program merges its four query rows one after another), one H100,
# results/decode_merge_topk-20261207T0748Z.json; and Quest's (int8 summaries): 0.067 against 0.059 ms at batch 1,
# 0.319 against 0.317 at batch 16, one H200, results/sparse_decode-20261207T173351Z.json.
FUSED_MERGE = False


def gather_decode_triton(q, k, v, idx, valid, scale: float | None = None, block_n: int | None = None,
                         fused_merge: bool | None = None) -> torch.Tensor:
    """Fused split-K kernel: each program reads ``idx`` positions of one selection head straight from the cache
    (no gathered copy) for all query heads that share it, skipping those ``valid`` masks out; the splits are
    merged by their log-sum-exp, by the last split of each head to finish (``fused_merge``, default
    :data:`FUSED_MERGE`: one launch; make the first call outside a CUDA-graph capture, which allocates the counts)
    or by a second kernel. No launch masks or copies the selection: at batch 1 the step is launch-bound, so PyTorch
    ops around the kernel would cost more than the reads."""
    _check(q, k, idx)
    if valid is not None and valid.shape != idx.shape:
        raise ValueError(f"valid {tuple(valid.shape)} must have the shape of idx {tuple(idx.shape)}")
    fused = FUSED_MERGE if fused_merge is None else fused_merge
    return _launch(q, k, v, idx, idx.shape[2], 0, 0, -1, scale, block_n, valid, fused_merge=fused)


def gather_decode_pages_triton(q, k, v, pages, page_size: int, scale: float | None = None,
                               last_page: int | None = None, block_n: int | None = None,
                               fused_merge: bool | None = None) -> torch.Tensor:
    """The same kernels over whole pages: ``pages [B, H_s, P]`` (plus ``last_page``) are turned into positions in
    the kernel, positions ``>= L`` masked there (still at most two launches, none to expand or mask the
    selection). Pages may come in any order (e.g. unsorted top-k). ``fused_merge`` (default :data:`FUSED_MERGE`):
    one launch, the last split of each selection head merging them (counts kept per device and reset by the kernel:
    make the first call outside a CUDA-graph capture)."""
    _check(q, k, pages)
    n_pages = pages.shape[2] + (last_page is not None)
    if n_pages == 0:
        raise ValueError("gather_decode_pages_triton: no page selected")
    last = -1 if last_page is None else last_page
    return _launch(q, k, v, pages, n_pages * page_size, page_size, pages.shape[2], last, scale, block_n,
                   fused_merge=FUSED_MERGE if fused_merge is None else fused_merge)


MERGE_SPLITS = 64  # splits a fused merge reads at once (more take several rounds)


def _launch(q, k, v, ids, n, page, n_ids, last, scale, block_n, valid=None, fused_merge=False):
    """Both kernels for ``n`` selected positions per head, given as positions (``page == 0``) or page ids; the tile
    (``block_n``, default :data:`BLOCK_N`) and the launch settings are read at the call, so a benchmark can set them."""
    block_n = block_n or BLOCK_N
    need_triton(q, "gather_decode_triton", "gather_decode_attention")
    b, hq, _, d = q.shape
    hk, length = k.shape[1], k.shape[2]
    hs = ids.shape[1]
    g = hq // hk
    rows = g if hs == hk else 1
    kvdiv = 1 if hs == hk else g
    block_g = max(16, 1 << (rows - 1).bit_length())
    nsplit, chunk = split_plan(b * hs, n, sm_count(q.device), block_n)
    out, op, mp, lp = split_outputs(q, b * hs, rows, nsplit, block_g)
    scale = scale if scale is not None else d ** -0.5
    ids = ids.contiguous()
    valid = ids if valid is None else valid.contiguous()
    fused = fused_merge and nsplit > 1
    extra = {}
    if fused:
        from leanformer.sparse.kernels.quest_scores import counts_for

        extra = dict(CNT=counts_for(q.device, b * hs), FUSED_MERGE=True,
                     BLOCK_S=min(MERGE_SPLITS, max(2, 1 << (nsplit - 1).bit_length())))
    _gather_decode_fwd[(b * hs, nsplit)](
        q, k, v, ids, valid, op, mp, lp, out, scale * 1.4426950408889634, q.stride(0), q.stride(1),
        k.stride(0), k.stride(1), k.stride(2), v.stride(0), v.stride(1), v.stride(2), ids.stride(0), ids.stride(1),
        hs, rows, kvdiv, n, length, chunk, nsplit, n_ids, last, PAGE=page, HAS_VALID=valid is not ids,
        ONE_SPLIT=nsplit == 1, BLOCK_G=block_g, BLOCK_N=block_n, D=d, num_warps=NUM_WARPS, num_stages=NUM_STAGES,
        **extra)
    if nsplit > 1 and not fused:
        merge_splits[(b * hs, rows)](op, mp, lp, out, nsplit, rows, block_g,
                                      BLOCK_S=max(2, 1 << (nsplit - 1).bit_length()), D=d, num_warps=1)
    return out.view(b, hq, 1, d)


def _check(q, k, idx):
    hq, hk, hs = q.shape[1], k.shape[1], idx.shape[1]
    if hs not in (hq, hk):
        raise ValueError(f"selection heads ({hs}) must equal query heads ({hq}) or key/value heads ({hk})")
    return hq // hk


def gather_decode_reference(q, k, v, idx, valid, scale: float | None = None) -> torch.Tensor:
    """Dense attention over the whole cache with the selection as a boolean mask (fp32 softmax)."""
    g = _check(q, k, idx)
    b, hs, _ = idx.shape
    length = k.shape[2]
    mask = torch.zeros(b, hs, length + 1, dtype=torch.bool, device=q.device)
    mask.scatter_(-1, idx if valid is None else torch.where(valid, idx, length), True)
    mask = mask[..., :length]
    if hs != q.shape[1]:
        mask = mask.repeat_interleave(g, 1)
    return attention(q, k, v, causal=False, mask=mask[:, :, None, :], scale=scale, backend="math")


def expand_pages(pages, page_size: int, length: int, last_page: int | None = None):
    """Page ids ``[B, H_s, P]`` (then ``last_page``) -> positions ``idx [B, H_s, P' page_size]`` and ``valid``
    (``None`` when ``length`` is a multiple of ``page_size``, else ``idx < length``)."""
    if last_page is not None:
        pages = torch.cat([pages, pages.new_full((*pages.shape[:2], 1), last_page)], -1)
    offs = torch.arange(page_size, device=pages.device)
    idx = (pages.long()[..., None] * page_size + offs).reshape(*pages.shape[:2], -1)
    return idx, (None if length % page_size == 0 else idx < length)


def gather_decode_pages_reference(q, k, v, pages, page_size: int, scale: float | None = None,
                                  last_page: int | None = None) -> torch.Tensor:
    """Reference for :func:`gather_decode_pages_triton`: pages expanded to positions, then the dense masked step."""
    idx, valid = expand_pages(pages, page_size, k.shape[2], last_page)
    return gather_decode_reference(q, k, v, idx, valid, scale)


def gather_decode_attention(q, k, v, idx, valid, scale: float | None = None) -> torch.Tensor:
    """Gather the selected keys/values (``N`` per head, not ``L``) and attend with SDPA."""
    g = _check(q, k, idx)
    b, hk, length, d = k.shape
    hs, n = idx.shape[1:]
    safe = idx if valid is None else torch.where(valid, idx, 0)
    if hs == hk:
        ix = safe[..., None].expand(b, hk, n, d)
        kg, vg = torch.gather(k, 2, ix), torch.gather(v, 2, ix)
        mask = None if valid is None else valid.repeat_interleave(g, 1)[:, :, None, :]
        gqa = g > 1
    else:
        heads = torch.arange(hs, device=q.device)[None, :, None] // g
        flat = (heads * length + safe).reshape(b, hs * n, 1).expand(b, hs * n, d)
        kg = torch.gather(k.reshape(b, hk * length, d), 1, flat).reshape(b, hs, n, d)
        vg = torch.gather(v.reshape(b, hk * length, d), 1, flat).reshape(b, hs, n, d)
        mask = None if valid is None else valid[:, :, None, :]
        gqa = False
    return F.scaled_dot_product_attention(q, kg, vg, attn_mask=mask, scale=scale, enable_gqa=gqa)


def run_decode(q, k, v, idx, valid, scale, impl: str):
    """``impl``: ``"triton"`` (fused, CUDA), ``"gather"`` (gather + SDPA, any device) or ``"reference"``."""
    if impl == "reference":
        return gather_decode_reference(q, k, v, idx, valid, scale)
    if impl == "triton":
        return gather_decode_triton(q, k, v, idx, valid, scale)
    return gather_decode_attention(q, k, v, idx, valid, scale)
