"""Line patterns' bookkeeping in one Triton launch each, beside the plain-PyTorch functions of
:mod:`leanformer.sparse.kernels.pattern` they replace on the GPU (same signatures, the same numbers):

* :func:`column_cost_triton` - :func:`~leanformer.sparse.kernels.pattern.column_cost`, the pairs each column adds
  below the block diagonals that cover it, for listed columns or every position, optionally weighted and summed
  per head (what :func:`~leanformer.sparse.prefill.vertical_slash.lines_kept_pairs` and
  :meth:`TilePattern.kept_pairs` want).
* :func:`from_lines_triton` - :func:`~leanformer.sparse.kernels.pattern.from_lines`, the kept block diagonals and
  columns listed in fixed-width slots.

The line methods call the dispatchers at the end (:func:`position_costs`, :func:`columns_cost`, :func:`from_lines`,
:func:`kept_pairs`): the launch on CUDA tensors, the PyTorch function elsewhere, with :data:`ENABLED` off, or for a
method run with ``impl="reference"``.

In PyTorch each is a chain of a dozen to thirty element-wise ops, gathers, scans and scatters over ``[B, H, T]``
(63 of the ~360 ops a FlexPrefill call issues at 32K tokens went to three ``column_cost`` calls): each a launch the
host issues and the GPU runs as a small kernel. Here a running count (one ``torch.cumsum``) and one launch of
``B H x ceil(N / BLOCK)`` programs, each a ``BLOCK`` of positions. Costs are integers (kept pairs), computed in int64
and written as float64 like the reference's.
"""

from __future__ import annotations

import torch

import leanformer.sparse.kernels.pattern as pattern
from leanformer.sparse.kernels.pattern import BIG, TilePattern
from leanformer.sparse.kernels.tile_attention import INTERPRET, on_gpu, triton

BLOCK = 1024

if triton is not None:
    import triton.language as tl

    EMPTY = tl.constexpr(BIG)  # an unused block-diagonal slot, as in pattern.from_lines

    @triton.jit
    def _column_cost(BD, RUN, COLS, W, OUT, scb, sch, scn, swb, swh, swn, H, NB, N, T, BS,
                     ALL: tl.constexpr, WEIGHT: tl.constexpr, SUM: tl.constexpr, BLOCK: tl.constexpr):
        """Cost of columns ``c0 .. c0 + BLOCK`` of row ``b H + h``: rows of the query blocks below the column's own
        block that no kept block diagonal covers. ``RUN`` is the running count of kept block diagonals
        (``cumsum(bdiag)``); positions outside ``[0, T)`` cost 0. ``ALL``: the columns are the positions themselves;
        ``WEIGHT``: times ``W != 0``; ``SUM``: added into ``OUT[row]`` (float64, zeroed) instead of stored."""
        row = tl.program_id(0)
        b = row // H
        h = row % H
        offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        m = offs < N
        if ALL:
            col = offs
        else:
            col = tl.load(COLS + b * scb + h * sch + offs * scn, mask=m, other=0)
        ok = m & (col >= 0) & (col < T)
        cb = tl.where(ok, col, 0) // BS
        span = NB - 1 - cb  # block diagonals that can still cover the column further down
        first = tl.load(BD + row * NB).to(tl.int64)
        n_cov = tl.load(RUN + row * NB + span, mask=ok, other=0).to(tl.int64) - first  # kept d in [1, span]
        last = tl.load(BD + row * NB + span, mask=ok & (span >= 1), other=0).to(tl.int64)
        rows_last = T - (NB - 1) * BS
        below = tl.maximum(T - (cb + 1) * BS, 0).to(tl.int64)
        cost = below - (BS * n_cov - (BS - rows_last) * last)
        cost = tl.where(ok, cost, 0)
        if WEIGHT:
            w = tl.load(W + b * swb + h * swh + offs * swn, mask=m, other=0)
            cost = tl.where(w != 0, cost, 0)
        if SUM:
            tl.atomic_add(OUT + row, tl.sum(cost, 0).to(tl.float64))
        else:
            tl.store(OUT + row * N + offs, cost.to(tl.float64), mask=m)

    @triton.jit
    def _from_lines(BD, RUN, CM, CNT, DIAGS, COLS, CCNT, NB, T, WIDTH, BS, BLOCK: tl.constexpr):
        """Program ``(row, c)``: the kept block diagonals among ``c BLOCK ..`` into their slots (``RUN - 1``) and the
        empty slots there ``BIG``; the kept columns among positions ``c BLOCK ..`` into slots ``CNT - 1`` (those
        under ``WIDTH``) and the empty slots there ``T``; each query block ending in the chunk its column count."""
        row = tl.program_id(0)
        offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        # block diagonals (NB slots)
        dm = offs < NB
        kept = tl.load(BD + row * NB + offs, mask=dm, other=0) != 0
        run = tl.load(RUN + row * NB + offs, mask=dm, other=0)
        tl.store(DIAGS + row * NB + run - 1, offs, mask=dm & kept)
        n_d = tl.load(RUN + row * NB + NB - 1)
        tl.store(DIAGS + row * NB + offs, tl.full([BLOCK], EMPTY, tl.int32), mask=dm & (offs >= n_d))
        # columns (WIDTH slots) and the count at each query block's end
        pm = offs < T
        on = tl.load(CM + row * T + offs, mask=pm, other=0) != 0
        cnt = tl.load(CNT + row * T + offs, mask=pm, other=0)
        tl.store(COLS + row * WIDTH + cnt - 1, offs, mask=pm & on & (cnt <= WIDTH))
        n_c = tl.load(CNT + row * T + T - 1)
        tl.store(COLS + row * WIDTH + offs, tl.full([BLOCK], 0, tl.int32) + T, mask=(offs < WIDTH) & (offs >= n_c))
        end = pm & (((offs + 1) % BS == 0) | (offs == T - 1))
        tl.store(CCNT + row * NB + offs // BS, tl.minimum(cnt, WIDTH), mask=end)


def _check():
    if triton is None:
        raise RuntimeError("the line-pattern kernels need triton; use kernels.pattern")


def _as_int8(x: torch.Tensor) -> torch.Tensor:
    """A bool tensor as int8 (the same bytes, any strides): what the kernels load."""
    return x.view(torch.int8) if x.dtype == torch.bool else x


def column_cost_triton(bdiag: torch.Tensor, cols: torch.Tensor | None, block_size: int, seq_len: int,
                       weight: torch.Tensor | None = None, total: bool = False) -> torch.Tensor:
    """:func:`~leanformer.sparse.kernels.pattern.column_cost` in one launch: ``bdiag [B, H, NQB]`` bool (diagonal 0
    kept), ``cols [B, H, N]`` positions (any strides; ``None``: every position ``0 .. T - 1``); positions outside
    ``[0, T)`` cost 0 (a list's padding). ``weight`` (``[B, H, N]``, any strides): only where it is nonzero.
    Returns ``[B, H, N]`` float64, or with ``total`` the sum per head ``[B, H]``."""
    _check()
    b, h, nb = bdiag.shape
    bd = _as_int8(bdiag.contiguous())
    run = torch.cumsum(bd, -1, dtype=torch.int32)
    n = seq_len if cols is None else cols.shape[-1]
    dev = bdiag.device
    out = torch.zeros(b, h, device=dev, dtype=torch.float64) if total else torch.empty(b, h, n, device=dev,
                                                                                        dtype=torch.float64)
    if n == 0:
        return out
    c = bd if cols is None else cols.expand(b, h, n)
    w = bd if weight is None else _as_int8(weight).expand(b, h, n)
    _column_cost[(b * h, triton.cdiv(n, BLOCK))](
        bd, run, c, w, out, *c.stride(), *w.stride(), h, nb, n, seq_len, block_size, ALL=cols is None,
        WEIGHT=weight is not None, SUM=total, BLOCK=BLOCK, num_warps=4)
    return out


def from_lines_triton(bdiag: torch.Tensor, colmask: torch.Tensor, block_size: int, seq_len: int,
                      max_cols: int | None = None) -> TilePattern:
    """:func:`~leanformer.sparse.kernels.pattern.from_lines` in one launch (after the two running counts)."""
    _check()
    b, h, nb = bdiag.shape
    bdiag = bdiag.clone()
    bdiag[..., 0] = True
    bd, cm = _as_int8(bdiag), _as_int8(colmask.contiguous())
    run = torch.cumsum(bd, -1, dtype=torch.int32)
    cnt = torch.cumsum(cm, -1, dtype=torch.int32)
    width = seq_len if max_cols is None else max(1, min(max_cols, seq_len))
    dev = bdiag.device
    diags = torch.empty(b, h, nb, dtype=torch.int32, device=dev)
    cols = torch.empty(b, h, width, dtype=torch.int32, device=dev)
    col_cnt = torch.empty(b, h, nb, dtype=torch.int32, device=dev)
    _from_lines[(b * h, triton.cdiv(seq_len, BLOCK))](  # NQB <= T: the column chunks cover the diagonals
        bd, run, cm, cnt, diags, cols, col_cnt, nb, seq_len, width, block_size, BLOCK=BLOCK, num_warps=4)
    return TilePattern(block_size, seq_len, run, cols, col_cnt, bdiag, diags=diags)


ENABLED = True  # the dispatchers below use the launches on CUDA tensors (off: the PyTorch functions everywhere)


def _gpu(x: torch.Tensor) -> bool:
    """Whether the launches can take ``x``: a CUDA tensor, triton, :data:`ENABLED` on (the interpreter's CPU tensors
    call the ``*_triton`` functions directly)."""
    return ENABLED and on_gpu(x) and not INTERPRET


def use_kernels(x: torch.Tensor, impl: str = "auto") -> bool:
    """Whether the dispatchers below hand ``x``'s bookkeeping to the launches: where they can take it (:func:`_gpu`)
    and the calling method's ``impl`` is not ``"reference"`` (which runs PyTorch everywhere)."""
    return impl != "reference" and _gpu(x)


# What the line methods call: the launch on the GPU, else the PyTorch function of kernels/pattern.py (same numbers).
# ``impl``: the calling method's resolved implementation ("reference": the PyTorch function on any device).

def position_costs(bdiag: torch.Tensor, block_size: int, seq_len: int, impl: str = "auto") -> torch.Tensor:
    """:func:`~leanformer.sparse.kernels.pattern.position_costs`: every position's column cost ``[B, H, T]``."""
    if use_kernels(bdiag, impl):
        return column_cost_triton(bdiag, None, block_size, seq_len)
    return pattern.position_costs(bdiag, block_size, seq_len)


def columns_cost(bdiag: torch.Tensor, colmask: torch.Tensor, block_size: int, seq_len: int,
                 impl: str = "auto") -> torch.Tensor:
    """:func:`~leanformer.sparse.kernels.pattern.columns_cost`: the kept columns' pairs in all, ``[B, H]``."""
    if use_kernels(bdiag, impl):
        return column_cost_triton(bdiag, None, block_size, seq_len, weight=colmask, total=True)
    return pattern.columns_cost(bdiag, colmask, block_size, seq_len)


def from_lines(bdiag: torch.Tensor, colmask: torch.Tensor, block_size: int, seq_len: int,
               max_cols: int | None = None, impl: str = "auto") -> TilePattern:
    """:func:`~leanformer.sparse.kernels.pattern.from_lines`: the lines' pattern, with no host synchronisation."""
    if use_kernels(bdiag, impl):
        return from_lines_triton(bdiag, colmask, block_size, seq_len, max_cols)
    return pattern.from_lines(bdiag, colmask, block_size, seq_len, max_cols)


def kept_pairs(pat: TilePattern, impl: str = "auto") -> torch.Tensor:
    """:meth:`TilePattern.kept_pairs`, the columns' share in one launch on the GPU."""
    if pat.cols.shape[-1] == 0 or not use_kernels(pat.bdiag, impl):
        return pat.kept_pairs()
    return pat.tile_pairs() + column_cost_triton(pat.bdiag, pat.cols, pat.block_size, pat.seq_len, total=True)
