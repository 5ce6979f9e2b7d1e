"""Attention with a learned additive bias whose gradient is computed beside the fused kernels, not by them.

``F.scaled_dot_product_attention`` with an ``attn_mask`` that needs a gradient runs only on the memory-efficient
kernel (on Hopper an sm80 CUTLASS kernel: in the H200 profile of a T5-base step, its backward was 22% of the step,
~3 ms per encoder layer). With the mask detached, cuDNN's fused attention takes it; the mask's gradient is then
computed here, from what the backward already has: ``dBias = sum_broadcast(P * (dO V^T - rowsum(dO * O)))``, the
softmax backward summed over the dimensions the bias is broadcast along (T5: the batch).

* :func:`bias_grad_reference`: plain PyTorch (fp32), any device, the ground truth;
* :func:`bias_grad_triton`: two Triton kernels (GPU; also runs on CPU under ``TRITON_INTERPRET=1``): per query
  row the log-sum-exp of the biased scores and ``delta = dO . O``; then ``P * (dP - delta)`` per ``[BM, BN]`` tile,
  recomputing ``P`` and ``dP = dO V^T`` with ``tl.dot`` and summing over the batch inside the program (no
  ``[B, H, T, T]`` tensor and no atomics). Both take the same arguments; any strides with a unit last one.
* :func:`attention_with_bias`: the attention op: SDPA on the detached bias, gradients of ``q, k, v`` from SDPA's
  own backward, the bias gradient from the op above (``torch.ops.leanformer.attention_bias_grad``, opaque to
  ``torch.compile``). Without a bias gradient to compute it is plain SDPA.

Layout ``q [B, H, T_q, D]``, ``k, v [B, H, T_k, D]``, ``bias`` broadcastable to ``[B, H, T_q, T_k]``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from leanformer.nn.gpu import fix_interpreter_bf16_dot

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the reference is complete
    triton = None

fix_interpreter_bf16_dot()  # under TRITON_INTERPRET=1 only


def bias_grad_reference(q, k, v, o, do, bias, scale: float) -> torch.Tensor:
    """``d loss / d bias`` (fp32, ``bias``'s shape) of ``o = softmax(q k^T * scale + bias) v`` given ``do``."""
    s = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale + bias.float()
    p = torch.softmax(s, -1).nan_to_num(0.0)  # a row with every key masked: no probability, no gradient
    dp = torch.matmul(do.float(), v.float().transpose(-1, -2))
    delta = (do.float() * o.float()).sum(-1, keepdim=True)
    return (p * (dp - delta)).sum_to_size(bias.shape)


if triton is not None:

    @triton.jit
    def _row_stats(Q, K, BIAS, O, DO, LSE, DELTA, sq_b, sq_h, sq_t, sk_b, sk_h, sk_t, sb_b, sb_h, sb_q, sb_k,
                   so_b, so_h, so_t, sd_b, sd_h, sd_t, H, TQ, TK, DH, scale,
                   BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr, PREC: tl.constexpr):
        """Per query row ``i`` of ``(b, h)``: ``LSE = logsumexp_j(q_i . k_j * scale + bias_ij)`` (``+inf`` where
        every key is masked) and ``DELTA = dO_i . O_i``."""
        bh, pid_m = tl.program_id(0), tl.program_id(1)
        b, h = bh // H, bh % H
        offs_m = pid_m * BM + tl.arange(0, BM)
        offs_d = tl.arange(0, BD)
        row_ok = offs_m < TQ
        rd_ok = row_ok[:, None] & (offs_d[None, :] < DH)
        q = tl.load(Q + b * sq_b + h * sq_h + offs_m[:, None] * sq_t + offs_d[None, :], mask=rd_ok, other=0.0)
        m_i = tl.full([BM], float("-inf"), tl.float32)
        l_i = tl.zeros([BM], tl.float32)
        for start in range(0, TK, BN):
            offs_n = start + tl.arange(0, BN)
            col_ok = offs_n < TK
            kt = tl.load(K + b * sk_b + h * sk_h + offs_n[None, :] * sk_t + offs_d[:, None],
                         mask=col_ok[None, :] & (offs_d[:, None] < DH), other=0.0)
            bias = tl.load(BIAS + b * sb_b + h * sb_h + offs_m[:, None] * sb_q + offs_n[None, :] * sb_k,
                           mask=row_ok[:, None] & col_ok[None, :], other=float("-inf"))
            s = tl.dot(q, kt, input_precision=PREC) * scale + bias.to(tl.float32)
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            l_i = l_i * tl.exp(m_i - m_safe) + tl.sum(tl.exp(s - m_safe[:, None]), 1)
            m_i = m_new
        lse = tl.where(m_i == float("-inf"), float("inf"), m_i + tl.log(l_i))
        tl.store(LSE + bh * TQ + offs_m, lse, mask=row_ok)
        o = tl.load(O + b * so_b + h * so_h + offs_m[:, None] * so_t + offs_d[None, :], mask=rd_ok, other=0.0)
        do = tl.load(DO + b * sd_b + h * sd_h + offs_m[:, None] * sd_t + offs_d[None, :], mask=rd_ok, other=0.0)
        tl.store(DELTA + bh * TQ + offs_m, tl.sum(o.to(tl.float32) * do.to(tl.float32), 1), mask=row_ok)

    @triton.jit
    def _bias_grad_tiles(Q, K, V, DO, LSE, DELTA, BIAS, G, sq_b, sq_h, sq_t, sk_b, sk_h, sk_t, sv_b, sv_h, sv_t,
                         so_b, so_h, so_t, sb_b, sb_h, sb_q, sb_k, H, TQ, TK, DH, REP, scale,
                         BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr, PREC: tl.constexpr):
        """``G[g, h, i, j] = sum_{b in group g} P_bij * (dP_bij - delta_bi)``, batch rows ``g*REP .. g*REP+REP-1``."""
        gh, pid_m, pid_n = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        g, h = gh // H, gh % H
        offs_m = pid_m * BM + tl.arange(0, BM)
        offs_n = pid_n * BN + tl.arange(0, BN)
        offs_d = tl.arange(0, BD)
        row_ok, col_ok, d_ok = offs_m < TQ, offs_n < TK, offs_d < DH
        # the bias of batch row g*REP serves the whole group: a bias broadcast over the batch has stride 0 there
        bias = tl.load(BIAS + g * REP * sb_b + h * sb_h + offs_m[:, None] * sb_q + offs_n[None, :] * sb_k,
                       mask=row_ok[:, None] & col_ok[None, :], other=float("-inf")).to(tl.float32)
        acc = tl.zeros([BM, BN], tl.float32)
        for r in range(0, REP):
            b = g * REP + r
            q = tl.load(Q + b * sq_b + h * sq_h + offs_m[:, None] * sq_t + offs_d[None, :],
                        mask=row_ok[:, None] & d_ok[None, :], other=0.0)
            kt = tl.load(K + b * sk_b + h * sk_h + offs_n[None, :] * sk_t + offs_d[:, None],
                         mask=col_ok[None, :] & d_ok[:, None], other=0.0)
            lse = tl.load(LSE + (b * H + h) * TQ + offs_m, mask=row_ok, other=float("inf"))
            p = tl.exp(tl.dot(q, kt, input_precision=PREC) * scale + bias - lse[:, None])
            do = tl.load(DO + b * so_b + h * so_h + offs_m[:, None] * so_t + offs_d[None, :],
                         mask=row_ok[:, None] & d_ok[None, :], other=0.0)
            vt = tl.load(V + b * sv_b + h * sv_h + offs_n[None, :] * sv_t + offs_d[:, None],
                         mask=col_ok[None, :] & d_ok[:, None], other=0.0)
            delta = tl.load(DELTA + (b * H + h) * TQ + offs_m, mask=row_ok, other=0.0)
            acc += p * (tl.dot(do, vt, input_precision=PREC) - delta[:, None])
        tl.store(G + gh * TQ * TK + offs_m[:, None] * TK + offs_n[None, :], acc,
                 mask=row_ok[:, None] & col_ok[None, :])


def _unit_last(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def bias_grad_triton(q, k, v, o, do, bias, scale: float, block_m: int = 64, block_n: int = 64) -> torch.Tensor:
    """:func:`bias_grad_reference` through the Triton kernels (same arguments, same result)."""
    if triton is None:
        raise RuntimeError("bias_grad_triton needs triton; use bias_grad_reference")
    bsz, h, tq, dh = q.shape
    tk = k.shape[2]
    if k.shape != (bsz, h, tk, dh) or v.shape != k.shape or o.shape != q.shape or do.shape != q.shape:
        raise ValueError(f"bias_grad_triton: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}, o "
                         f"{tuple(o.shape)}, do {tuple(do.shape)}: expected q, o, do [B, H, T_q, D] and k, v "
                         f"[B, H, T_k, D]")
    b4 = bias.reshape((1,) * (4 - bias.dim()) + tuple(bias.shape))
    groups = b4.shape[0]
    if groups not in (1, bsz):
        raise ValueError(f"bias_grad_triton: bias batch size {groups} must be 1 or {bsz}")
    full = b4.expand(bsz, h, tq, tk)
    q, k, v, o, do = (_unit_last(t) for t in (q, k, v, o, do))
    lse = torch.empty(bsz * h, tq, device=q.device, dtype=torch.float32)
    delta = torch.empty_like(lse)
    bd = max(16, triton.next_power_of_2(dh))
    prec = "ieee" if q.dtype == torch.float32 else "tf32"  # fp32 inputs: exact products, as the reference
    _row_stats[(bsz * h, triton.cdiv(tq, block_m))](
        q, k, full, o, do, lse, delta, *q.stride()[:3], *k.stride()[:3], *full.stride(), *o.stride()[:3],
        *do.stride()[:3], h, tq, tk, dh, scale, BM=block_m, BN=block_n, BD=bd, PREC=prec)
    g = torch.empty(groups, h, tq, tk, device=q.device, dtype=torch.float32)
    _bias_grad_tiles[(groups * h, triton.cdiv(tq, block_m), triton.cdiv(tk, block_n))](
        q, k, v, do, lse, delta, full, g, *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *do.stride()[:3],
        *full.stride(), h, tq, tk, dh, bsz // groups, scale, BM=block_m, BN=block_n, BD=bd, PREC=prec)
    return g.sum_to_size(bias.shape)


@torch.library.custom_op("leanformer::attention_bias_grad", mutates_args=())
def attention_bias_grad(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor, do: torch.Tensor,
                        bias: torch.Tensor, scale: float) -> torch.Tensor:
    """The bias gradient (fp32, ``bias``'s shape): Triton kernels on CUDA, the reference elsewhere."""
    fn = bias_grad_triton if q.is_cuda and triton is not None else bias_grad_reference
    return fn(q, k, v, o, do, bias, scale)


@attention_bias_grad.register_fake
def _(q, k, v, o, do, bias, scale):
    return bias.new_empty(bias.shape, dtype=torch.float32)


class _BiasGradTap(torch.autograd.Function):
    """Passes the attention output through; on the way back, adds the bias gradient."""

    @staticmethod
    def forward(ctx, y, q, k, v, bias, scale):
        ctx.save_for_backward(q, k, v, y, bias)
        ctx.scale = scale
        return y.view_as(y)  # no copy: the output is the input, the backward adds the bias gradient

    @staticmethod
    def backward(ctx, dy):
        q, k, v, y, bias = ctx.saved_tensors
        g = torch.ops.leanformer.attention_bias_grad(q, k, v, y, dy, bias, ctx.scale)
        return dy, None, None, None, g.to(bias.dtype), None


def attention_with_bias(q, k, v, bias: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """``softmax(q k^T * scale + bias) v`` through SDPA (no dropout). When ``bias`` needs a gradient, SDPA sees it
    detached (so cuDNN's fused kernel can run) and the gradient comes from ``attention_bias_grad``."""
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.detach().to(q.dtype), scale=scale)
    if not (torch.is_grad_enabled() and bias.requires_grad):
        return y
    return _BiasGradTap.apply(y, q.detach(), k.detach(), v.detach(), bias, scale)
