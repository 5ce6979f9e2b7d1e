"""One decode step over selected cache positions: a fused Triton kernel and a gather-then-SDPA path (both read only
the kept keys), and the dense masked reference (reads the whole cache), all with the same signature.

``q [B, H_q, 1, D]``; cache ``k, v [B, H_kv, L, D]``; ``idx [B, H_s, N]`` int64 positions and ``valid [B, H_s, N]``
bool (or ``None``: all valid; no host synchronisation happens, so a step can be captured in a CUDA graph), where
``H_s`` is ``H_kv`` (one selection per key head, shared by its GQA group) or ``H_q`` (one per query head).
Returns ``[B, H_q, 1, D]``. Duplicate valid positions are not allowed (they would be counted twice).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from leanformer.nn.attention import attention
from leanformer.sparse.kernels.tile_attention import INTERPRET, triton

if triton is not None:
    import triton.language as tl

    @triton.jit
    def _gather_decode_fwd(Q, K, V, IDX, OP, MP, LP, qk_scale, sqb, sqh, skb, skh, skt, svb, svh, svt, sib, sih,
                           HS, G, KVDIV, N, LEN, CHUNK, NSPLIT,
                           BLOCK_G: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr):
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
            idx = tl.load(IDX + b * sib + hs * sih + offs, mask=nm, other=-1)
            ok = nm & (idx >= 0) & (idx < LEN)
            kt = tl.load(K + b * skb + kvh * skh + idx[:, None] * skt + offs_d[None, :], mask=ok[:, None], other=0.0)
            s = tl.dot(q, tl.trans(kt)) * qk_scale
            s = tl.where(ok[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            p = tl.exp2(s - m_safe[:, None])
            alpha = tl.exp2(m_i - m_safe)
            vt = tl.load(V + b * svb + kvh * svh + idx[:, None] * svt + offs_d[None, :], mask=ok[:, None], other=0.0)
            acc = acc * alpha[:, None] + tl.dot(p.to(vt.dtype), vt)
            l_i = l_i * alpha + tl.sum(p, 1)
            m_i = m_new
        row = (pid * NSPLIT + sp) * BLOCK_G + offs_g
        tl.store(OP + row[:, None] * D + offs_d[None, :], acc)
        tl.store(MP + row, m_i)
        tl.store(LP + row, l_i)

    @triton.jit
    def _merge_splits(OP, MP, LP, OUT, NSPLIT, ROWS, BG, BLOCK_S: tl.constexpr, D: tl.constexpr):
        """One program per (selection head, query row): the splits' partial outputs merged by log-sum-exp."""
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


def gather_decode_triton(q, k, v, idx, valid, scale: float | None = None, block_n: int = 64) -> torch.Tensor:
    """Fused split-K kernel: each program reads ``idx`` positions of one selection head straight from the cache
    (no gathered copy) for all query heads that share it; a second kernel merges the splits by their log-sum-exp
    (two launches per step: at batch 1 the step is launch-bound, so PyTorch ops for the merge would cost more
    than the reads)."""
    if triton is None or not (q.is_cuda or INTERPRET):
        raise RuntimeError("gather_decode_triton needs CUDA tensors and triton; use gather_decode_attention")
    g = _check(q, k, idx)
    b, hq, _, d = q.shape
    hk, length = k.shape[1], k.shape[2]
    hs, n = idx.shape[1:]
    if valid is not None:
        idx = torch.where(valid, idx, -1)
    rows = g if hs == hk else 1
    kvdiv = 1 if hs == hk else g
    block_g = max(16, 1 << (rows - 1).bit_length())
    sms = torch.cuda.get_device_properties(q.device).multi_processor_count if q.is_cuda else 4
    nsplit = max(1, min(math.ceil(4 * sms / (b * hs)), math.ceil(n / block_n)))
    chunk = math.ceil(n / nsplit / block_n) * block_n
    nsplit = math.ceil(n / chunk)
    op = torch.empty(b * hs * nsplit * block_g, d, device=q.device, dtype=torch.float32)
    mp = torch.empty(b * hs * nsplit * block_g, device=q.device, dtype=torch.float32)
    lp = torch.empty_like(mp)
    scale = scale if scale is not None else d ** -0.5
    idx = idx.contiguous()
    _gather_decode_fwd[(b * hs, nsplit)](
        q, k, v, idx, op, mp, lp, scale * 1.4426950408889634, q.stride(0), q.stride(1),
        k.stride(0), k.stride(1), k.stride(2), v.stride(0), v.stride(1), v.stride(2), idx.stride(0), idx.stride(1),
        hs, rows, kvdiv, n, length, chunk, nsplit, BLOCK_G=block_g, BLOCK_N=block_n, D=d, num_warps=4, num_stages=2)
    out = torch.empty(b * hs, rows, d, device=q.device, dtype=q.dtype)
    _merge_splits[(b * hs, rows)](op, mp, lp, out, nsplit, rows, block_g,
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
