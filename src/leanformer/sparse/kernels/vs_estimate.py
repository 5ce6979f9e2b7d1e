"""Vertical and slash scores of the last ``window`` queries in two Triton launches, beside their plain-PyTorch
reference :func:`leanformer.sparse.prefill.estimate.vs_scores` (same signature, same outputs).

``vs_scores_triton(q, k, window, scale, tail=0)``: ``q [B, H_q, T, D]``, ``k [B, H_kv, T, D]`` (GQA) ->
``(vertical [B, H_q, T], slash [B, H_q, T], tail [B, H_q, T] or None)`` fp32: the softmax attention of the last
``W = min(window, T)`` queries over all keys (causal inside the window), summed down each key column (vertical) and
along each diagonal ``key = query - o`` (slash, indexed by ``o``), both divided by ``W``; ``tail`` averages the last
``tail`` rows (FlexPrefill's query-aware test).

The reference materialises the ``W x T`` probabilities of every head in fp32 (4.3 GB at 128K tokens, 32 heads,
``W = 256``) and reads them three times. Here nothing of size ``W x T`` is ever written:

1. ``_stats`` - each row's softmax max and normaliser (log2 units), FlashAttention style: one program per (head,
   ``BM`` window rows, share of the keys), the rows' queries resident, key tiles streamed; the shares are merged by
   log-sum-exp on the host side of the launch (``[H, splits, W]`` numbers).
2. ``_sums`` - the same grid recomputes each ``BM x BN`` tile of logits, normalises it, and reduces it two ways in
   registers: down the columns (the tile's share of the vertical scores) and along its diagonals. The diagonal sums
   use a skew: ``tl.gather`` rotates row ``r`` of the tile left by ``r``, after which column ``j`` holds diagonal
   offset ``base - j`` where the rotation did not wrap and ``base + BN - j`` where it did, so two masked column sums
   give every diagonal of the tile. The wrapped half of key block ``kb`` and the plain half of block ``kb - 1``
   share offsets, so each program carries one ``BN`` vector from one key block to the next and writes each
   *bucket* of ``BN`` offsets once. With ``TRANSPOSE`` (the default) it computes the same on the transposed
   tile ``[BN keys, BM rows]``: the column sums become sums along each key's row, within a warp, and the skew rotates
   each window row's column instead; the same buckets, 1.17-1.34x faster on one H100.

What crosses programs (a row block's buckets, the vertical share of each row block, the first wrapped half of each
key share) is summed afterwards with a few tensor ops over ``O(T)`` numbers per head and row block. Work is two
``W x T x D`` products per head, as the reference's one matmul plus its softmax, without the memory traffic.
"""

from __future__ import annotations

import math

import torch

from leanformer.nn.gpu import sm_count
from leanformer.sparse.kernels.tile_attention import need_triton, triton

# BM window rows x BN keys per tile (BM <= BN: a row's rotation wraps at most once), 4 warps, key tiles in three
# pipeline stages: of eight settings timed on one H100 (benchmarks/results/vs_estimate-20261207T002648Z.json, the same
# sums bit for bit) the fastest for both methods at 32K and 128K, 1.10-1.12x two stages for vertical-slash's window
# and 1.05x for FlexPrefill's. The sums on the transposed tile (TRANSPOSE=1: the column sums a reduction
# within each warp) took 1.17-1.18x less time for vertical-slash's window and 1.33-1.34x for FlexPrefill's at 32K and
# 128K on one H100 (results/vs_estimate-20261207T181546Z.json; 8 warps were 1.5-1.9x slower). By launch on one H200
# (results/vs_estimate-20261207T173412Z.json, the tile as window rows x keys, 128K) the column sums (FlexPrefill's
# tail sums with them) were 26% / 39% of the sums launch for vertical-slash / FlexPrefill, the diagonal sums (the
# skew's gather and its two sums across the warps) 61% / 44%.
DEFAULT_CONFIG = {"BM": 64, "BN": 64, "num_warps": 4, "num_stages": 3, "TRANSPOSE": 1}
LOG2E = 1.4426950408889634

if triton is not None:
    import triton.language as tl

    @triton.jit
    def _window_rows(Q, b, h, rb, sqb, sqh, sqt, T, W, BM: tl.constexpr, D: tl.constexpr):
        """The window rows ``a`` of row block ``rb``, their query positions, validity and queries ``[BM, D]``."""
        a = rb * BM + tl.arange(0, BM)
        pos = T - W + a
        ok = a < W
        offs_d = tl.arange(0, D)
        q = tl.load(Q + b * sqb + h * sqh + pos[:, None] * sqt + offs_d[None, :], mask=ok[:, None], other=0.0)
        return a, pos, ok, q

    @triton.jit
    def _block_scores(q, K, b, hk, kb, pos, first, qk_scale, skb, skh, skt, T, BN: tl.constexpr, D: tl.constexpr,
                      TRANSPOSE: tl.constexpr = False):
        """Key block ``kb``'s positions ``c`` and the window rows' scores against it ``[BM, BN]`` (log2 units),
        keys after a row's query at ``-inf`` (only blocks past ``first``, the row block's first query, need it).
        ``TRANSPOSE``: the scores as ``[BN, BM]``, key ``c`` in row ``c``."""
        c = kb * BN + tl.arange(0, BN)
        offs_d = tl.arange(0, D)
        kt = tl.load(K + b * skb + hk * skh + c[:, None] * skt + offs_d[None, :], mask=c[:, None] < T, other=0.0)
        if TRANSPOSE:
            s = tl.dot(kt, tl.trans(q)) * qk_scale
            if kb * BN + BN - 1 > first:
                s = tl.where(c[:, None] <= pos[None, :], s, float("-inf"))
        else:
            s = tl.dot(q, tl.trans(kt)) * qk_scale
            if kb * BN + BN - 1 > first:
                s = tl.where(c[None, :] <= pos[:, None], s, float("-inf"))
        return c, s

    @triton.jit
    def _stats(Q, K, MP, LP, qk_scale, sqb, sqh, sqt, skb, skh, skt, HQ, GROUP, T, W, NKB, KPS, WPAD,
               BM: tl.constexpr, BN: tl.constexpr, D: tl.constexpr, STAGES: tl.constexpr):
        """Partial row max ``MP`` and normaliser ``LP`` ``[B H_q, splits, WPAD]`` of one share of the keys."""
        bh = tl.program_id(0)
        rb = tl.program_id(1)
        sp = tl.program_id(2)
        b = bh // HQ
        h = bh % HQ
        a, pos, ok, q = _window_rows(Q, b, h, rb, sqb, sqh, sqt, T, W, BM, D)
        m_i = tl.full([BM], float("-inf"), tl.float32)
        l_i = tl.zeros([BM], tl.float32)
        first = T - W + rb * BM  # the block's first query: keys after it need the causal mask
        kb_s = sp * KPS
        # no key after the block's last query is seen by any of its rows
        kb_e = tl.minimum(tl.minimum(kb_s + KPS, NKB), (first + BM - 1) // BN + 1)
        for kb in tl.range(kb_s, kb_e, num_stages=STAGES):
            c, s = _block_scores(q, K, b, h // GROUP, kb, pos, first, qk_scale, skb, skh, skt, T, BN, D)
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row may see no key of this share yet
            l_i = l_i * tl.exp2(m_i - m_safe) + tl.sum(tl.exp2(s - m_safe[:, None]), 1)
            m_i = m_new
        tl.store(MP + (bh * tl.num_programs(2) + sp) * WPAD + a, m_i)
        tl.store(LP + (bh * tl.num_programs(2) + sp) * WPAD + a, l_i)

    @triton.jit
    def _sums(Q, K, M, L, VP, TP, SB, BND, qk_scale, sqb, sqh, sqt, skb, skh, skt, HQ, GROUP, T, W, TAIL, NKB, KPS,
              WPAD, TPAD, HAS_TAIL: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, D: tl.constexpr,
              STAGES: tl.constexpr, TRANSPOSE: tl.constexpr = False, VERT: tl.constexpr = True,
              SLASH: tl.constexpr = True):
        """Column sums ``VP [B H_q, NRB, TPAD]`` (and of the tail rows, ``TP``) and diagonal buckets
        ``SB [B H_q, NRB, NKB + 1, BN]`` of one row block over one share of the keys; ``BND [B H_q, NRB, splits,
        BN]`` takes the wrapped half of the share's first key block (a bucket the previous share writes).
        ``TRANSPOSE``: the tile as ``[BN keys, BM window rows]``, so the column sums are sums along each key's row
        (within a warp) and the skew rotates each window row's column instead (a gather across rows), after which
        the two masked sums are along rows too; the same outputs. ``VERT`` / ``SLASH`` off leave the column or
        diagonal sums out (a benchmark's ablation only: what each costs)."""
        bh = tl.program_id(0)
        rb = tl.program_id(1)
        sp = tl.program_id(2)
        nrb = tl.num_programs(1)
        b = bh // HQ
        h = bh % HQ
        a, pos, ok, q = _window_rows(Q, b, h, rb, sqb, sqh, sqt, T, W, BM, D)
        # padding rows (a >= W): +inf max and a zero reciprocal normaliser give them probability 0
        m = tl.load(M + bh * WPAD + a, mask=ok, other=float("inf"))
        rinv = tl.where(ok, 1.0 / tl.load(L + bh * WPAD + a, mask=ok, other=1.0), 0.0)
        tail_row = ok & (a >= W - TAIL)
        ROWS: tl.constexpr = 1 if TRANSPOSE else 0  # the tile's axis of window rows: the sums run along it
        if TRANSPOSE:
            r = tl.arange(0, BM)[None, :]
            j = tl.arange(0, BN)[:, None]
        else:
            r = tl.arange(0, BM)[:, None]
            j = tl.arange(0, BN)[None, :]
        # row r (a column when transposed) rotated by r: entry j of the result holds key j + r (mod BN)
        rot = (j + r) % BN
        wrap = (j + r) >= BN
        first = T - W + rb * BM
        kb_s = sp * KPS
        kb_e = tl.minimum(kb_s + KPS, NKB)
        row = bh * nrb + rb
        carry = tl.zeros([BN], tl.float32)
        for kb in tl.range(kb_s, kb_e, num_stages=STAGES):
            c, s = _block_scores(q, K, b, h // GROUP, kb, pos, first, qk_scale, skb, skh, skt, T, BN, D, TRANSPOSE)
            if TRANSPOSE:  # window rows along axis 1, keys along axis 0
                p = tl.exp2(s - m[None, :]) * rinv[None, :]
                tail_p = tl.where(tail_row[None, :], p, 0.0)
            else:
                p = tl.exp2(s - m[:, None]) * rinv[:, None]
                tail_p = tl.where(tail_row[:, None], p, 0.0)
            if VERT:
                tl.store(VP + row * TPAD + c, tl.sum(p, ROWS))
                if HAS_TAIL:
                    tl.store(TP + row * TPAD + c, tl.sum(tail_p, ROWS))
            if SLASH:
                g = tl.gather(p, rot, 1 - ROWS)
                lo = tl.sum(tl.where(wrap, 0.0, g), ROWS)  # offsets T - W + rb BM - kb BN - j
                hi = tl.sum(tl.where(wrap, g, 0.0), ROWS)  # the same offsets + BN: bucket kb - 1
            else:
                lo = tl.zeros([BN], tl.float32)
                hi = lo
            if kb == kb_s:
                if sp == 0:
                    tl.store(SB + row * (NKB + 1) * BN + tl.arange(0, BN), hi)
                else:
                    tl.store(BND + (row * tl.num_programs(2) + sp) * BN + tl.arange(0, BN), hi)
            else:
                tl.store(SB + (row * (NKB + 1) + kb) * BN + tl.arange(0, BN), carry + hi)
            carry = lo
        tl.store(SB + (row * (NKB + 1) + kb_e) * BN + tl.arange(0, BN), carry)


def resolve_config(config: dict | None = None) -> dict:
    cfg = dict(DEFAULT_CONFIG)
    cfg.update(config or {})
    if cfg["BM"] > cfg["BN"]:
        raise ValueError(f"vs_scores_triton needs BM <= BN; got BM={cfg['BM']}, BN={cfg['BN']}")
    return cfg


def plan(bh: int, w: int, t: int, device, cfg: dict) -> tuple[int, int, int, int]:
    """``(row blocks, key blocks, key blocks per share, shares)``: enough programs to fill the GPU ~4 times."""
    nrb = -(-w // cfg["BM"])
    nkb = -(-t // cfg["BN"])
    want = max(1, math.ceil(4 * sm_count(device) / (bh * nrb)))
    kps = -(-nkb // min(want, nkb))
    return nrb, nkb, kps, -(-nkb // kps)


def vs_scores_triton(q, k, window: int, scale: float, tail: int = 0, max_elems: int | None = None,
                     config: dict | None = None):
    """Same contract as :func:`leanformer.sparse.prefill.estimate.vs_scores` (``max_elems`` is accepted and
    unused: nothing of size ``W x T`` is materialised). Logits are fp32 products of the input-precision q and k
    (the reference rounds them to the input dtype first). ``config``: ``BM``, ``BN``, ``num_warps``,
    ``num_stages`` over :data:`DEFAULT_CONFIG`."""
    steps = launches(q, k, window, scale, tail, config)
    steps["stats"]()
    steps["sums"]()
    return steps["finish"]()


def launches(q, k, window: int, scale: float, tail: int = 0, config: dict | None = None) -> dict:
    """:func:`vs_scores_triton` as separate steps over buffers allocated once: ``stats()`` (the first launch and
    the merge of its key shares), ``sums()`` (the second launch), ``finish()`` (the outputs from the buffers, once
    per ``sums()``: it adds the key shares' buckets in place) and, for a benchmark's ablation, ``sums_vertical()``
    / ``sums_slash()`` (the second launch with only the column or only the diagonal sums: wrong outputs, what each
    part costs)."""
    need_triton(q, "vs_scores_triton", "estimate.vs_scores")
    b, hq, t, d = q.shape
    hk = k.shape[1]
    if d not in (16, 32, 64, 128, 256):
        raise ValueError(f"head dim {d} not supported by vs_scores_triton (power of two 16..256)")
    cfg = resolve_config(config)
    bm, bn = cfg["BM"], cfg["BN"]
    w = min(window, t)
    tail = min(w, tail)
    bh = b * hq
    nrb, nkb, kps, nsplit = plan(bh, w, t, q.device, cfg)
    wpad, tpad = nrb * bm, nkb * bn
    q, k = q.contiguous(), k.contiguous()
    f32 = dict(device=q.device, dtype=torch.float32)
    mp = torch.empty(bh, nsplit, wpad, **f32)
    lp = torch.empty(bh, nsplit, wpad, **f32)
    vp = torch.empty(bh, nrb, tpad, **f32)
    tp = torch.empty(bh, nrb, tpad, **f32) if tail else vp
    sb = torch.empty(bh, nrb, nkb + 1, bn, **f32)
    bnd = torch.empty(bh, nrb, nsplit, bn, **f32)
    qk_scale = scale * LOG2E
    strides = (*q.stride()[:3], *k.stride()[:3])
    launch = dict(BM=bm, BN=bn, D=d, STAGES=cfg["num_stages"], num_warps=cfg["num_warps"])
    grid = (bh, nrb, nsplit)
    stat = {}

    def stats():
        _stats[grid](q, k, mp, lp, qk_scale, *strides, hq, hq // hk, t, w, nkb, kps, wpad, **launch)
        stat["m"] = m = mp.amax(1)
        stat["lse"] = (lp * torch.exp2(mp - m[:, None])).sum(1)

    def sums(vert=True, slash=True):
        _sums[grid](q, k, stat["m"], stat["lse"], vp, tp, sb, bnd, qk_scale, *strides, hq, hq // hk, t, w, tail, nkb,
                    kps, wpad, tpad, HAS_TAIL=bool(tail), TRANSPOSE=bool(cfg["TRANSPOSE"]), VERT=vert, SLASH=slash,
                    **launch)

    def finish():
        vert = (vp.sum(1)[:, :t] / w).reshape(b, hq, t)
        ptail = (tp.sum(1)[:, :t] / tail).reshape(b, hq, t) if tail else None
        return vert, _slash(sb, bnd, kps, nsplit, t, w, bm, bn).reshape(b, hq, t) / w, ptail

    return {"stats": stats, "sums": sums, "finish": finish, "sums_vertical": lambda: sums(slash=False),
            "sums_slash": lambda: sums(vert=False)}


def _slash(sb, bnd, kps: int, nsplit: int, t: int, w: int, bm: int, bn: int):
    """Diagonal sums ``[B H_q, T]`` from the buckets: ``sb[..., rb, kb + 1, j]`` holds offset
    ``T - W + rb BM - kb BN - j``. Reversed and flattened, row block ``rb``'s buckets are a run of offsets starting
    ``NKB BN - 1 - T + W - rb BM`` entries in; the row blocks' runs are added at their shifts."""
    bh, nrb, nb1, _ = sb.shape
    if nsplit > 1:  # the wrapped half of each share's first key block belongs to the previous share's last bucket
        starts = torch.arange(1, nsplit, device=sb.device) * kps
        sb.index_add_(2, starts, bnd[:, :, 1:])
    rev = sb.flatten(2).flip(-1)  # [B H_q, NRB, (NKB + 1) BN]
    out = torch.zeros(bh, t, device=sb.device, dtype=sb.dtype)
    nkb = nb1 - 1
    for rb in range(nrb):
        d = nkb * bn - 1 - t + w - rb * bm
        n = min(t, rev.shape[-1] - d)
        out[:, :n] += rev[:, rb, d:d + n]
    return out
