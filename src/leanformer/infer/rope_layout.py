"""Rotary and the layout change of a prefill's q / k / v in one pass: a Triton kernel and its plain-PyTorch reference
(:func:`leanformer.infer.layers.rope_heads`, :func:`leanformer.infer.layers.to_heads`).

``rope_heads_triton(x, cos, sin)``: ``x [B, T, H, D]`` (a projection's output viewed as heads; any strides with a
unit last one), ``cos, sin [B, T, D]`` (Hugging Face's rotate-half convention) -> ``[B, H, T, D]`` contiguous, rotated
in fp32 and rounded once to ``x``'s dtype. ``cos=None``: the layout change alone (the values).

Each program moves a ``BT x D`` tile of one head: ``BT`` rows of ``D`` contiguous elements are read (stride ``H D``
apart) and written as one contiguous block, so reads and writes are whole rows. A prompt's rotary and layout change
read and write q and k once; compiled as one elementwise expression over the transposed output, the same work ran at
~0.3 TB/s on an H100 (186 ms of a 128K-token prefill of Qwen2.5-7B's shape,
``benchmarks/results/profile_inference-20261206T070226Z.json``).
"""

from __future__ import annotations

import torch

from leanformer.sparse.kernels.tile_attention import INTERPRET, triton

BLOCK_T = 32  # rows a program moves

if triton is not None:
    import triton.language as tl

    @triton.jit
    def _rope_heads(X, COS, SIN, OUT, sxb, sxt, sxh, scb, sct, T, H, ROPE: tl.constexpr, BT: tl.constexpr,
                    HALF: tl.constexpr):
        """Program ``(b x T-block, h)``: rows ``t`` of head ``h`` of ``X [B, T, H, 2 HALF]`` rotated into
        ``OUT [B, H, T, 2 HALF]``."""
        nt = tl.cdiv(T, BT)
        b = (tl.program_id(0) // nt).to(tl.int64)
        t = (tl.program_id(0) % nt) * BT + tl.arange(0, BT)
        h = tl.program_id(1).to(tl.int64)
        o = tl.arange(0, HALF)
        ok = t[:, None] < T
        tt = t.to(tl.int64)[:, None]
        src = X + b * sxb + h * sxh + tt * sxt + o[None, :]
        dst = OUT + ((b * H + h) * T + tt) * (2 * HALF) + o[None, :]
        x1 = tl.load(src, mask=ok, other=0.0)
        x2 = tl.load(src + HALF, mask=ok, other=0.0)
        if ROPE:
            cs = b * scb + tt * sct + o[None, :]
            c1 = tl.load(COS + cs, mask=ok, other=0.0).to(tl.float32)
            c2 = tl.load(COS + cs + HALF, mask=ok, other=0.0).to(tl.float32)
            s1 = tl.load(SIN + cs, mask=ok, other=0.0).to(tl.float32)
            s2 = tl.load(SIN + cs + HALF, mask=ok, other=0.0).to(tl.float32)
            y1 = x1.to(tl.float32) * c1 - x2.to(tl.float32) * s1
            y2 = x2.to(tl.float32) * c2 + x1.to(tl.float32) * s2
            tl.store(dst, y1.to(OUT.dtype.element_ty), mask=ok)
            tl.store(dst + HALF, y2.to(OUT.dtype.element_ty), mask=ok)
        else:
            tl.store(dst, x1, mask=ok)
            tl.store(dst + HALF, x2, mask=ok)


def supported(x: torch.Tensor) -> bool:
    """Whether :func:`rope_heads_triton` takes ``x``: CUDA (or the interpreter), a power-of-two head dim 16-256 and
    a unit last stride."""
    d = x.shape[-1]
    return (triton is not None and (x.is_cuda or INTERPRET) and 16 <= d <= 256 and d & (d - 1) == 0
            and x.stride(-1) == 1)


def rope_heads_triton(x: torch.Tensor, cos: torch.Tensor | None = None, sin: torch.Tensor | None = None,
                      block_t: int = BLOCK_T) -> torch.Tensor:
    """``[B, T, H, D]`` -> contiguous ``[B, H, T, D]``, rotated by ``cos, sin [B, T, D]`` unless ``cos`` is None.
    ``cos``/``sin`` are broadcast over the batch where their first size is 1."""
    if not supported(x):
        raise RuntimeError("rope_heads_triton needs a CUDA tensor (or the interpreter), triton, a power-of-two head "
                           "dim 16-256 and a unit last stride; use layers.rope_heads")
    b, t, h, d = x.shape
    out = torch.empty(b, h, t, d, device=x.device, dtype=x.dtype)
    if out.numel() == 0:
        return out
    rope = cos is not None
    if rope:
        if cos.shape[-1] != d or cos.stride(-1) != 1 or sin.stride() != cos.stride():
            raise ValueError("cos and sin must be [B, T, D] with one layout and a unit last stride")
        scb = 0 if cos.shape[0] == 1 else cos.stride(0)
        cst = (scb, cos.stride(1))
    else:
        cos = sin = x  # never read
        cst = (0, 0)
    _rope_heads[(b * triton.cdiv(t, block_t), h)](
        x, cos, sin, out, x.stride(0), x.stride(1), x.stride(2), *cst, t, h, ROPE=rope, BT=block_t, HALF=d // 2,
        num_warps=4)
    return out
