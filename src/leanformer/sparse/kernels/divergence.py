"""FlexPrefill's query-aware test, the distance between a pooled estimate and the true block distribution: a
plain-PyTorch reference (``block_distance_reference``) and one Triton launch (``block_distance_triton``), same
signature; ``block_distance`` picks the launch on CUDA tensors.

Semantics (both): ``scores [..., N]`` (a row of pooled block scores, at least one finite) and ``probs [..., T]`` (a
probability row over ``T <= N * block_size`` keys) -> fp32 ``[...]``, the square-root Jensen-Shannon divergence
between ``softmax(scores)`` and ``probs`` summed over ``block_size``-key blocks. The reference takes a softmax, pads
and sums the blocks and then the divergence: about twenty small launches. The kernel holds one row per program: the
scores' maximum and sum, then the blocks in chunks, each chunk's block sums and divergence terms at once. Sums are
fp32 in another order than the reference's: distances agree to rounding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from leanformer.sparse.kernels.tile_attention import need_triton, on_gpu, triton

MAX_BLOCKS = 8192  # blocks a row may have for the launch (a 1M-token prompt at 128-token blocks)


def sqrt_js(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Square root of the Jensen-Shannon divergence between distributions along the last dim."""
    m = 0.5 * (p + q)
    kl = lambda a, b: (a * (torch.log(a.clamp_min(1e-20)) - torch.log(b.clamp_min(1e-20)))).sum(-1)  # noqa: E731
    return (0.5 * kl(p, m) + 0.5 * kl(q, m)).clamp_min(0).sqrt()


def block_distance_reference(scores: torch.Tensor, probs: torch.Tensor, block_size: int) -> torch.Tensor:
    """The reference: ``softmax(scores)`` against ``probs``' block sums (the last block padded with zeros)."""
    n, t = scores.shape[-1], probs.shape[-1]
    estimate = torch.softmax(scores.float(), -1)
    true = F.pad(probs.float(), (0, n * block_size - t)).unflatten(-1, (n, block_size)).sum(-1)
    return sqrt_js(estimate, true)


if triton is not None:
    import triton.language as tl

    @triton.jit
    def _kl_half(a, m):
        """``0.5 * a * (log a - log m)`` with both floored at 1e-20, as :func:`sqrt_js` takes them."""
        return 0.5 * a * (tl.log(tl.maximum(a, 1e-20)) - tl.log(tl.maximum(m, 1e-20)))

    @triton.jit
    def _block_distance_fwd(S, P, OUT, N, T, ss, sp, BS: tl.constexpr, NP: tl.constexpr, CB: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        offs = tl.arange(0, NP)
        x = tl.load(S + row * ss + offs, mask=offs < N, other=float("-inf"))
        mx = tl.max(x, 0)
        den = tl.sum(tl.where(offs < N, tl.exp(x - mx), 0.0), 0)
        acc = tl.zeros([CB], dtype=tl.float32)
        offs_c = tl.arange(0, CB)
        offs_k = tl.arange(0, BS)
        for c in range(0, N, CB):
            blocks = c + offs_c
            on = blocks < N
            pos = blocks[:, None] * BS + offs_k[None, :]
            q = tl.sum(tl.load(P + row * sp + pos, mask=pos < T, other=0.0), 1)  # the true mass of each block
            xc = tl.load(S + row * ss + blocks, mask=on, other=float("-inf"))
            p = tl.where(on, tl.exp(xc - mx) / den, 0.0)
            m = 0.5 * (p + q)
            acc += tl.where(on, _kl_half(p, m) + _kl_half(q, m), 0.0)
        tl.store(OUT + row, tl.sqrt(tl.maximum(tl.sum(acc, 0), 0.0)))


def _fits(n: int, t: int, block_size: int) -> bool:
    """Whether the launch takes ``n`` blocks over ``t`` keys: at most :data:`MAX_BLOCKS`, a power-of-two size, the
    last block holding the last key."""
    return n <= MAX_BLOCKS and not block_size & (block_size - 1) and (n - 1) * block_size < t <= n * block_size


def block_distance_triton(scores: torch.Tensor, probs: torch.Tensor, block_size: int) -> torch.Tensor:
    """The same distances in one launch, one program per row (rows of up to :data:`MAX_BLOCKS` blocks; the block
    size a power of two)."""
    need_triton(scores, "block_distance_triton", "block_distance_reference")
    n, t = scores.shape[-1], probs.shape[-1]
    if not _fits(n, t, block_size):
        raise ValueError(f"{n} blocks of {block_size} over {t} keys: the kernel takes up to {MAX_BLOCKS} blocks of a "
                         "power-of-two size that end with the keys; use block_distance_reference")
    s, p = scores.reshape(-1, n).float(), probs.reshape(-1, t).float()
    s, p = (x if x.stride(-1) == 1 else x.contiguous() for x in (s, p))
    out = torch.empty(s.shape[0], device=scores.device, dtype=torch.float32)
    if s.shape[0]:
        np_ = max(16, 1 << (n - 1).bit_length())
        cb = max(1, min(np_, 4096 // block_size))
        _block_distance_fwd[(s.shape[0],)](s, p, out, n, t, s.stride(0), p.stride(0), BS=block_size,
                                           NP=np_, CB=cb, num_warps=4)
    return out.reshape(scores.shape[:-1])


def block_distance(scores: torch.Tensor, probs: torch.Tensor, block_size: int, impl: str = "auto") -> torch.Tensor:
    """:func:`block_distance_triton` on CUDA tensors where it applies, else :func:`block_distance_reference`;
    ``impl="reference"`` (the calling method's): the reference on any device."""
    if impl != "reference" and on_gpu(scores) and _fits(scores.shape[-1], probs.shape[-1], block_size):
        return block_distance_triton(scores, probs, block_size)
    return block_distance_reference(scores, probs, block_size)
