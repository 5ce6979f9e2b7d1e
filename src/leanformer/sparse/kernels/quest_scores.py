"""Quest's page scores: a plain-PyTorch reference (``page_scores``) and one Triton launch (``page_scores_triton``),
same signature.

``q [B, H_q, 1, D]``; page metadata ``kmin, kmax [B, H_kv, P, D]`` (the element-wise minimum and maximum of each
page's keys, in the cache dtype). The score of page ``p`` for query head ``h`` is the upper bound
``sum_d max(q_d min_pd, q_d max_pd)`` of ``q_h``'s dot products with the page's keys; with ``share_gqa`` it is
summed over the GQA group of each key head (``[B, H_kv, P]``), else one row per query head (``[B, H_q, P]``).
Scores are fp32.
"""

from __future__ import annotations

import torch

from leanformer.sparse.kernels.tile_attention import INTERPRET, triton


def page_scores(q: torch.Tensor, kmin: torch.Tensor, kmax: torch.Tensor, share_gqa: bool) -> torch.Tensor:
    """The reference: the bound as two matrix products, ``relu(q) . max + min(q, 0) . min`` (equal to the
    element-wise form since ``min <= max``), each in the cache dtype (no fp32 copy of the metadata; scores only
    rank pages)."""
    b, hq, _, d = q.shape
    hk = kmin.shape[1]
    qg = q.reshape(b, hk, hq // hk, d)
    s = torch.matmul(qg.clamp(min=0), kmax.transpose(-1, -2)).float()
    s = s + torch.matmul(qg.clamp(max=0), kmin.transpose(-1, -2)).float()  # [B, H_kv, G, P]
    return s.sum(2) if share_gqa else s.reshape(b, hq, -1)


if triton is not None:
    import triton.language as tl

    @triton.jit
    def _page_scores_fwd(Q, KMIN, KMAX, OUT, sqb, sqh, snb, snh, snp, sxb, sxh, sxp, HK, G, P,
                         SHARE: tl.constexpr, PREC: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_P: tl.constexpr,
                         D: tl.constexpr):
        """One program per (batch x key head, block of pages): the group's query rows are loaded once, each page's
        min and max once, for all ``G`` rows."""
        pid = tl.program_id(0)
        b = pid // HK
        h = pid % HK
        offs_g = tl.arange(0, BLOCK_G)
        offs_p = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
        offs_d = tl.arange(0, D)
        gm = offs_g < G
        pm = offs_p < P
        q = tl.load(Q + b * sqb + (h * G + offs_g)[:, None] * sqh + offs_d[None, :], mask=gm[:, None], other=0.0)
        mn = tl.load(KMIN + b * snb + h * snh + offs_p[:, None] * snp + offs_d[None, :], mask=pm[:, None], other=0.0)
        mx = tl.load(KMAX + b * sxb + h * sxh + offs_p[:, None] * sxp + offs_d[None, :], mask=pm[:, None], other=0.0)
        # the compiler promotes bf16 min/max to fp32 (the interpreter does not): cast back for tl.dot
        ty = KMAX.dtype.element_ty
        zero = tl.zeros_like(q)
        s = tl.dot(tl.maximum(q, zero).to(ty), tl.trans(mx), input_precision=PREC)
        s += tl.dot(tl.minimum(q, zero).to(ty), tl.trans(mn), input_precision=PREC)  # [BLOCK_G, BLOCK_P]; padded 0
        if SHARE:
            tl.store(OUT + pid * P + offs_p, tl.sum(s, 0), mask=pm)
        else:
            rows = pid * G + offs_g  # query head h * G + g of batch b
            tl.store(OUT + rows[:, None] * P + offs_p[None, :], s, mask=gm[:, None] & pm[None, :])


def page_scores_triton(q: torch.Tensor, kmin: torch.Tensor, kmax: torch.Tensor, share_gqa: bool,
                       block_p: int = 64) -> torch.Tensor:
    """The same scores in one launch (grid ``B H_kv x ceil(P / block_p)``), products accumulated in fp32 (the
    reference rounds each product to the cache dtype). ``D`` must be a power of two >= 16; ``kmin``/``kmax`` may be
    views over the pages (any strides but a unit last one)."""
    if triton is None or not (q.is_cuda or INTERPRET):
        raise RuntimeError("page_scores_triton needs CUDA tensors and triton; use page_scores")
    b, hq, _, d = q.shape
    hk, p = kmin.shape[1], kmin.shape[2]
    g = hq // hk
    q, kmin, kmax = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, kmin, kmax))
    out = torch.empty(b, hk if share_gqa else hq, p, device=q.device, dtype=torch.float32)
    if p == 0:
        return out
    # fp32 metadata: exact products (tf32 would round the inputs to 10 bits)
    prec = "ieee" if q.dtype == torch.float32 else "tf32"
    _page_scores_fwd[(b * hk, triton.cdiv(p, block_p))](
        q, kmin, kmax, out, q.stride(0), q.stride(1), kmin.stride(0), kmin.stride(1), kmin.stride(2),
        kmax.stride(0), kmax.stride(1), kmax.stride(2), hk, g, p, SHARE=share_gqa, PREC=prec,
        BLOCK_G=max(16, 1 << (g - 1).bit_length()), BLOCK_P=block_p, D=d, num_warps=4)
    return out
