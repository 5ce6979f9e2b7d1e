"""The ``k`` largest entries of each row: a plain-PyTorch reference (``topk_rows``) and one Triton launch
(``topk_rows_triton``), same signature and the same result, ties included.

Block top-k's estimation picks, for each query block, the best ``k`` key blocks out of ``NKB`` scores. On an H200
at 128K tokens (32 heads, 1024 x 1024 block scores per head) ``torch.topk`` on fp32 takes ~1.05 ms (a multi-pass
radix select: four passes of four launches), as long as a full ``torch.sort``, more than the scores and the pooling
together (``benchmarks/bench_block_estimation.py``). The kernel here is one program per row with the row in
registers (one warp per 1024 scores): a 32-step bisection over the scores' order-preserving integer keys finds the
``k``-th largest, then one prefix sum places the winners. No sort: the result comes in ascending index order,
which is all block top-k needs (which blocks, not their rank).

Semantics (both paths): the ``k`` largest of each row of ``scores [..., N]`` (any float dtype), equal scores taken
lowest index first, returned as int32 ``[..., k]`` in ascending index order. ``+inf`` and ``-inf`` are ordinary
values (forced and forbidden blocks); rows holding NaN get an unspecified (but valid, distinct) choice.
"""

from __future__ import annotations

import torch

from leanformer.sparse.kernels.tile_attention import INTERPRET, triton

# one row lives in registers as int32 keys, 1024 per warp: 32 registers a thread
MAX_TRITON_ROW = 4096


def topk_rows(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The reference: a stable descending sort (equal scores keep index order), the first ``k``, sorted by index."""
    _check(scores, k)
    top = torch.sort(scores, dim=-1, descending=True, stable=True).indices[..., :k]
    return top.sort(-1).values.int()


def _check(scores: torch.Tensor, k: int) -> None:
    if not scores.is_floating_point():
        raise TypeError(f"topk_rows takes float scores, got {scores.dtype}")
    if not 0 <= k <= scores.shape[-1]:
        raise ValueError(f"k={k} must be between 0 and the row length {scores.shape[-1]}")


if triton is not None:
    import triton.language as tl

    @triton.jit
    def _topk_rows_fwd(S, OUT, N, K, NP: tl.constexpr):
        """One program per row: bisect for the ``K``-th largest key, then keep every larger key and the first
        ``K - #larger`` keys equal to it, written in index order (positions from a prefix sum). Keys are int32 and
        a row of up to 1024 sits in one warp, so each bisection step's count is a warp reduction (no barrier)."""
        row = tl.program_id(0).to(tl.int64)
        offs = tl.arange(0, NP)
        valid = offs < N
        x = tl.load(S + row * N + offs, mask=valid, other=0.0).to(tl.float32)
        x = tl.where(x == 0.0, 0.0, x)  # -0 equals +0 (a tie, as in torch.sort)
        bits = x.to(tl.int32, bitcast=True)
        # order-preserving int32: flip the magnitude bits of negative floats (-inf < ... < -0 < +0 < ... < +inf);
        # padding takes the smallest int32, after every real key of its value (it has the highest index)
        key = tl.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)
        key = tl.where(valid, key, -2147483648)
        lo = tl.full((), -2147483648, tl.int64)  # invariant: at least K keys >= lo, fewer than K keys > hi
        hi = tl.full((), 2147483647, tl.int64)
        for _ in range(32):
            mid = (lo + hi + 1) >> 1
            enough = tl.sum((key >= mid.to(tl.int32)).to(tl.int32), 0) >= K
            lo = tl.where(enough, mid, lo)
            hi = tl.where(enough, hi, mid - 1)
        thr = lo.to(tl.int32)
        gt = key > thr
        eq = key == thr
        need = K - tl.sum(gt.to(tl.int32), 0)
        take = gt | (eq & (tl.cumsum(eq.to(tl.int32), 0) <= need))
        pos = tl.cumsum(take.to(tl.int32), 0) - 1
        tl.store(OUT + row * K + pos, offs, mask=take)


def topk_rows_triton(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The same selection in one launch (one program per row). Rows up to :data:`MAX_TRITON_ROW` long; fp32, bf16
    or fp16 scores (compared as fp32)."""
    if triton is None or not (scores.is_cuda or INTERPRET):
        raise RuntimeError("topk_rows_triton needs CUDA tensors and triton; use topk_rows")
    _check(scores, k)
    n = scores.shape[-1]
    if n > MAX_TRITON_ROW:
        raise ValueError(f"rows of {n} scores are longer than the kernel's {MAX_TRITON_ROW}; use topk_rows")
    lead = scores.shape[:-1]
    s = scores.reshape(-1, n).contiguous()
    out = torch.empty(s.shape[0], k, device=scores.device, dtype=torch.int32)
    if k and s.shape[0]:
        np_ = max(16, 1 << (n - 1).bit_length())
        _topk_rows_fwd[(s.shape[0],)](s, out, n, k, NP=np_, num_warps=max(1, np_ // 1024))
    return out.reshape(*lead, k)


def topk_blocks(scores: torch.Tensor, k: int) -> torch.Tensor:
    """:func:`topk_rows_triton` where it runs (CUDA, rows up to :data:`MAX_TRITON_ROW`), else :func:`topk_rows`."""
    if triton is not None and scores.is_cuda and scores.shape[-1] <= MAX_TRITON_ROW:
        return topk_rows_triton(scores, k)
    return topk_rows(scores, k)
