"""How many of a row's largest softmax probabilities reach a share ``alpha`` of its mass: a plain-PyTorch reference
(``coverage_rows``) and one Triton launch (``coverage_rows_triton``), same signature.

FlexPrefill's query-aware heads keep, for each query block, the fewest key blocks whose pooled-score softmax holds
``alpha`` of the row. The reference materialises the softmax of every row and sorts it: at 128K tokens that is
``32 x 1024 x 1024`` probabilities and a segmented sort of 32M entries. The kernel holds one row in registers (rows
up to :data:`MAX_ROW`), takes its softmax there, and bisects over the probabilities' order-preserving integer keys
for the smallest value ``v`` whose larger-or-equal entries still hold ``alpha`` of the mass (32 steps, each one
masked sum); the count is the entries above ``v`` plus as many copies of ``v`` as the remainder needs. No sort.

Semantics (both): ``scores [..., N]`` (``-inf`` = excluded, at least one finite per row) -> int32 ``[...]``, the
smallest ``k >= 1`` whose ``k`` largest probabilities sum to at least ``alpha`` times the row's sum. Sums are fp32 in
different orders (the reference's running sum over the sorted row, the kernel's tree sums), so a row whose running
sum lands within rounding of the target may differ by one.
"""

from __future__ import annotations

import torch

from leanformer.sparse.kernels.tile_attention import INTERPRET, need_triton, triton

MAX_ROW = 4096


def coverage_rows(scores: torch.Tensor, alpha: float) -> torch.Tensor:
    """The reference: softmax, a descending sort, a running sum."""
    p = torch.softmax(scores.float(), -1)
    s = torch.sort(p, dim=-1, descending=True).values
    cum = torch.cumsum(s, -1)
    return ((cum < alpha * cum[..., -1:]).sum(-1) + 1).clamp(max=scores.shape[-1]).int()


if triton is not None:
    import triton.language as tl

    @triton.jit
    def _coverage_fwd(S, OUT, N, alpha, NP: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        offs = tl.arange(0, NP)
        valid = offs < N
        x = tl.load(S + row * N + offs, mask=valid, other=float("-inf")).to(tl.float32)
        p = tl.exp(x - tl.max(x, 0))
        p = tl.where(valid, p, 0.0)
        target = alpha * tl.sum(p, 0)
        # p >= 0: its float bits order as int32; padding and excluded entries are 0 (key 0, never above a threshold
        # that matters: a zero adds no mass)
        key = p.to(tl.int32, bitcast=True)
        lo = tl.full((), 0, tl.int64)  # invariant: the entries >= lo hold >= target; the entries > hi do not
        hi = tl.full((), 2139095040, tl.int64)  # the bits of +inf
        for _ in range(32):
            mid = (lo + hi + 1) >> 1
            enough = tl.sum(tl.where(key >= mid.to(tl.int32), p, 0.0), 0) >= target
            lo = tl.where(enough, mid, lo)
            hi = tl.where(enough, hi, mid - 1)
        thr = lo.to(tl.int32)
        v = thr.to(tl.float32, bitcast=True)
        above = key > thr
        mass = tl.sum(tl.where(above, p, 0.0), 0)
        n_eq = tl.sum((key == thr).to(tl.int32), 0)
        need = tl.where(v > 0, tl.ceil((target - mass) / tl.where(v > 0, v, 1.0)), 0.0).to(tl.int32)
        k = tl.sum(above.to(tl.int32), 0) + tl.minimum(tl.maximum(need, 0), n_eq)
        tl.store(OUT + row, tl.minimum(tl.maximum(k, 1), N))


def coverage_rows_triton(scores: torch.Tensor, alpha: float) -> torch.Tensor:
    """The same count in one launch, one program per row (rows up to :data:`MAX_ROW` entries)."""
    need_triton(scores, "coverage_rows_triton", "coverage_rows")
    n = scores.shape[-1]
    if n > MAX_ROW:
        raise ValueError(f"rows of {n} scores are longer than the kernel's {MAX_ROW}; use coverage_rows")
    s = scores.reshape(-1, n).contiguous()
    out = torch.empty(s.shape[0], device=scores.device, dtype=torch.int32)
    if s.shape[0]:
        np_ = max(16, 1 << (n - 1).bit_length())
        _coverage_fwd[(s.shape[0],)](s, out, n, float(alpha), NP=np_, num_warps=max(1, min(8, np_ // 512)))
    return out.reshape(scores.shape[:-1])


def coverage(scores: torch.Tensor, alpha: float) -> torch.Tensor:
    """:func:`coverage_rows_triton` where it runs (CUDA or the interpreter, rows up to :data:`MAX_ROW`), else
    :func:`coverage_rows`."""
    if triton is not None and (scores.is_cuda or INTERPRET) and scores.shape[-1] <= MAX_ROW:
        return coverage_rows_triton(scores, alpha)
    return coverage_rows(scores, alpha)
