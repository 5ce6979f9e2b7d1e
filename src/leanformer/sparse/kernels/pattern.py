"""The one sparse pattern every prefill kernel consumes: key *tiles* per query block plus gathered key *columns*.

A prompt of ``T`` tokens is cut into query blocks and key blocks of ``block_size`` tokens (the last one may be
partial). For each ``(batch, query head, query block i)`` the pattern lists

* **tiles**: key blocks ``kb <= i`` computed whole (causally masked on the diagonal ``kb == i``), either given
  explicitly (``tiles``, ``[B, H, NQB, KT]``) or as *block diagonals* ``d`` shared by all query blocks
  (``diags``, ``[B, H, ND]``; query block ``i`` computes key block ``i - d``). Block-sparse methods use explicit tiles;
  slash lines of vertical-slash methods are computed on the block diagonals they cross, which is how MInference's
  kernel computes them (whole tiles around each kept diagonal).
* **columns**: single key positions (vertical lines, attention sinks) gathered for every query at or after them,
  except where a kept tile already covers them (so no pair is computed twice). Patterns with columns must keep block
  diagonal 0 and hold tiles equal to their block diagonals, which ``bdiag`` records.

A *hybrid* pattern (FlexPrefill: query-aware heads keep blocks, the others lines) holds both ``tiles`` and
``diags`` and a per-head choice ``tiled_heads``: those heads read their tiles, the others their block diagonals
(and columns).

The boolean mask of the pattern (``to_mask``) is exactly what the kernels compute; ``kept_pairs`` counts it without
building it (tests check the two agree).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache

import torch

BIG = 1 << 30


@dataclass
class TilePattern:
    """Shapes: ``tile_cnt, col_cnt, bdiag`` ``[B, H, NQB]``; ``diags`` ``[B, H, ND]`` or ``tiles`` ``[B, H, NQB, KT]``
    (int32, first ``tile_cnt`` entries valid); ``cols`` ``[B, H, NV]`` int32 sorted, padded with ``seq_len``."""

    block_size: int
    seq_len: int
    tile_cnt: torch.Tensor
    cols: torch.Tensor
    col_cnt: torch.Tensor
    bdiag: torch.Tensor
    diags: torch.Tensor | None = None
    tiles: torch.Tensor | None = None
    # every query block's diagonal is its last valid tile (entry tile_cnt - 1): the block mask needs no search for it
    diag_last: bool = False
    # [B, H] bool: heads whose tiles are ``tiles`` (the others use ``diags``), for patterns holding both
    tiled_heads: torch.Tensor | None = None

    @property
    def n_blocks(self) -> int:
        return -(-self.seq_len // self.block_size)

    def rows(self) -> torch.Tensor:
        """Rows in each query block, ``[NQB]``."""
        i = torch.arange(self.n_blocks, device=self.tile_cnt.device)
        return (self.seq_len - i * self.block_size).clamp(max=self.block_size)

    def block_mask(self) -> torch.Tensor:
        """Boolean ``[B, H, NQB, NKB]``: key block ``kb`` is a computed tile of query block ``i``."""
        n = self.n_blocks
        b, h = self.tile_cnt.shape[:2]
        dev = self.tile_cnt.device
        if self.diags is not None:
            i = torch.arange(n, device=dev)
            d = i[:, None] - i[None, :]
            by_diags = self.bdiag[:, :, d.clamp(min=0)] & (d >= 0)
            if self.tiled_heads is None:
                return by_diags
        valid = torch.arange(self.tiles.shape[-1], device=dev) < self.tile_cnt[..., None]
        if self.tiled_heads is not None:  # the other heads' tile entries are not theirs (may be anything)
            valid = valid & self.tiled_heads[..., None, None]
        blk = torch.zeros(b, h, n, n + 1, dtype=torch.bool, device=dev)
        idx = torch.where(valid, self.tiles.long(), n)
        blk.scatter_(-1, idx, True)
        if self.tiled_heads is not None:
            return torch.where(self.tiled_heads[..., None, None], blk[..., :n], by_diags)
        return blk[..., :n]

    def to_mask(self, blocks: tuple[int, int] | None = None) -> torch.Tensor:
        """Boolean ``[B, H, T, T]`` (True = pair computed). With ``blocks = (i0, i1)``, the rows of query blocks
        ``i0 .. i1 - 1`` only, against the keys up to their last row (nothing later is causal): ``[B, H, rows,
        keys]``, so a reference can walk the prompt in strips of ``O(rows x T)`` memory."""
        t, bs, n = self.seq_len, self.block_size, self.n_blocks
        i0, i1 = blocks if blocks is not None else (0, n)
        r0, r1 = i0 * bs, min(i1 * bs, t)
        dev = self.tile_cnt.device
        rows, keys = torch.arange(r0, r1, device=dev), torch.arange(r1, device=dev)
        causal = keys[None, :] <= rows[:, None]
        blk = self.block_mask()[:, :, i0:i1, :i1]
        b, h, m = blk.shape[:3]
        # each block entry blown up to a bs x bs square by one expand + copy (indexing by pos // bs twice was ~2x
        # slower on the CPU, where the demo's prefill methods build this mask in every layer)
        mask = blk[:, :, :, None, :, None].expand(b, h, m, bs, i1, bs).reshape(b, h, m * bs, i1 * bs)
        mask = mask[..., :r1 - r0, :r1]
        colmask = torch.zeros(b, h, t + 1, dtype=torch.bool, device=dev)
        colmask.scatter_(-1, self.cols.long().clamp(max=t), True)
        # a pair is computed where it is causal and its tile or its column is kept
        return (mask | colmask[:, :, None, :r1]) & causal

    def tile_pairs(self) -> torch.Tensor:
        """The tiles' share of :meth:`kept_pairs`, ``[B, H]`` float64."""
        # every query block keeps its diagonal tile (causal triangle); other tiles are rows x block_size
        weights, offset = _tile_weights(self.block_size, self.seq_len, self.tile_cnt.device)
        return torch.matmul(self.tile_cnt.double(), weights) + offset

    def kept_pairs(self) -> torch.Tensor:
        """Computed query-key pairs per ``(batch, head)``, ``[B, H]`` float64, without building the mask."""
        bs, t = self.block_size, self.seq_len
        tiles = self.tile_pairs()
        if self.cols.shape[-1] == 0:
            return tiles
        cost = column_cost(self.bdiag, self.cols.long().clamp(max=t - 1), bs, t)
        return tiles + (cost * (self.cols < t)).sum(-1)


@lru_cache(maxsize=32)
def _tile_weights(block_size: int, seq_len: int, device) -> tuple[torch.Tensor, float]:
    """``(w [NQB] float64, c)`` with ``kept = tile_cnt @ w + c`` for tiles-only counting: ``w_i = rows_i x
    block_size`` per tile, ``c`` the diagonal triangles less the one full tile each count includes. Cached per shape
    (read-only): counting is two launches, not a dozen (they sit between a model's attention kernels)."""
    n = -(-seq_len // block_size)
    rows = (seq_len - torch.arange(n, dtype=torch.float64) * block_size).clamp(max=block_size)
    offset = float((rows * (rows + 1) / 2).sum() - (rows * block_size).sum())
    return (rows * block_size).to(device), offset


def position_costs(bdiag: torch.Tensor, block_size: int, seq_len: int) -> torch.Tensor:
    """:func:`column_cost` of every position ``0 .. T - 1`` ``[B, H, T]``."""
    pos = torch.arange(seq_len, device=bdiag.device).expand(*bdiag.shape[:2], seq_len)
    return column_cost(bdiag, pos, block_size, seq_len)


def columns_cost(bdiag: torch.Tensor, colmask: torch.Tensor, block_size: int, seq_len: int) -> torch.Tensor:
    """Pairs the kept columns ``colmask [B, H, T]`` add in all, ``[B, H]`` float64."""
    return (position_costs(bdiag, block_size, seq_len) * colmask).sum(-1)


def column_cost(bdiag: torch.Tensor, cols: torch.Tensor, block_size: int, seq_len: int) -> torch.Tensor:
    """Pairs a kept column adds: rows in query blocks below its own block not covered by a kept block diagonal.

    ``bdiag [B, H, NQB]`` (diagonal 0 assumed kept, so a column's own block is covered), ``cols [B, H, N]`` positions;
    returns ``[B, H, N]`` float64."""
    bs, t = block_size, seq_len
    n = bdiag.shape[-1]
    cb = cols // bs
    span = n - 1 - cb  # block diagonals that can still cover this column further down
    prefix = torch.cumsum(bdiag.double(), -1) - bdiag[..., :1].double()  # number of kept d in [1, x]
    n_cov = torch.gather(prefix, -1, span)
    last_cov = torch.gather(bdiag, -1, span) & (span >= 1)
    rows_last = float(t - (n - 1) * bs)
    below = (t - (cb + 1) * bs).clamp(min=0).double()
    return below - (bs * n_cov - (bs - rows_last) * last_cov.double())

def from_diagonals(bdiag: torch.Tensor, colmask: torch.Tensor, block_size: int, seq_len: int) -> TilePattern:
    """Pattern from kept block diagonals ``bdiag [B, H, NQB]`` (diagonal 0 is forced on) and kept columns
    ``colmask [B, H, T]`` (bool)."""
    n = -(-seq_len // block_size)
    bdiag = bdiag.clone()
    bdiag[..., 0] = True
    dev = bdiag.device
    ar = torch.arange(n, device=dev)
    diags = torch.sort(torch.where(bdiag, ar, BIG), -1).values
    nd = int(bdiag.sum(-1).max())
    diags = diags[..., :nd].contiguous()
    tile_cnt = torch.searchsorted(diags, ar.expand(*diags.shape[:2], n).contiguous(), right=True)
    cols, col_cnt = _columns(colmask, block_size, seq_len)
    return TilePattern(block_size, seq_len, tile_cnt.int(), cols, col_cnt, bdiag, diags=diags.int())


def from_lines(bdiag: torch.Tensor, colmask: torch.Tensor, block_size: int, seq_len: int,
               max_cols: int | None = None) -> TilePattern:
    """:func:`from_diagonals` with no host synchronisation: the block diagonals are listed in ``NQB`` slots and the
    columns in ``max_cols`` slots (default ``T``; a bound the caller knows, e.g. a native line count), sorted and
    padded as there, by a running count and one scatter each instead of a sort whose width is read back to the
    host. The kernels read only the first ``tile_cnt`` / ``col_cnt`` entries, so the patterns compute the same."""
    n = -(-seq_len // block_size)
    bdiag = bdiag.clone()
    bdiag[..., 0] = True
    dev = bdiag.device
    ar = torch.arange(n, device=dev, dtype=torch.int32)
    run = torch.cumsum(bdiag, -1, dtype=torch.int32)
    diags = torch.full((*bdiag.shape[:2], n + 1), BIG, dtype=torch.int32, device=dev)
    diags.scatter_(-1, torch.where(bdiag, run - 1, n).long(), ar.expand(bdiag.shape))
    width = seq_len if max_cols is None else max(1, min(max_cols, seq_len))
    cnt = torch.cumsum(colmask, -1, dtype=torch.int32)
    pos = torch.arange(seq_len, device=dev, dtype=torch.int32).expand(colmask.shape)
    cols = torch.full((*colmask.shape[:2], width + 1), seq_len, dtype=torch.int32, device=dev)
    cols.scatter_(-1, torch.where(colmask, cnt - 1, width).long().clamp(max=width), pos)
    ends = ((torch.arange(n, device=dev) + 1) * block_size).clamp(max=seq_len) - 1
    col_cnt = cnt[..., ends].clamp(max=width)
    return TilePattern(block_size, seq_len, run.contiguous(), cols[..., :width].contiguous(), col_cnt.contiguous(),
                       bdiag, diags=diags[..., :n].contiguous())


def from_tiles(blk: torch.Tensor, block_size: int, seq_len: int) -> TilePattern:
    """Pattern from a block-level boolean ``blk [B, H, NQB, NKB]`` (future blocks dropped, diagonal forced on)."""
    n = blk.shape[-1]
    ar = torch.arange(n, device=blk.device)
    blk = (blk & (ar[None, :] <= ar[:, None])) | torch.eye(n, dtype=torch.bool, device=blk.device)
    tile_cnt = blk.sum(-1)
    kt = int(tile_cnt.max())
    tiles = torch.sort(torch.where(blk, ar, BIG), -1).values[..., :kt]
    tiles = torch.where(tiles >= BIG, 0, tiles)
    b, h = blk.shape[:2]
    # ascending block indices: the diagonal, the largest causal one, comes last
    return TilePattern(block_size, seq_len, tile_cnt.int(), *no_columns(b, h, n, blk.device),
                       tiles=tiles.int().contiguous(), diag_last=True)


def reverse_tiles(pattern: TilePattern) -> TilePattern:
    """The same pattern with each query block's valid tiles listed in reverse (its diagonal first, so not
    ``diag_last``): every kernel must give the same output for any tile order."""
    ar = torch.arange(pattern.tiles.shape[-1], device=pattern.tiles.device)
    rev = (pattern.tile_cnt.long()[..., None] - 1 - ar).clamp(min=0)
    return replace(pattern, tiles=torch.gather(pattern.tiles, -1, rev).contiguous(), diag_last=False)


@lru_cache(maxsize=32)
def no_columns(b: int, h: int, n: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(cols, col_cnt, bdiag)`` of a tiles-only pattern: no columns, no block diagonals. Shared per shape and
    read-only (a pattern never writes its fields): three launches fewer per call."""
    zeros = torch.zeros(b, h, n, dtype=torch.int32, device=device)
    return zeros[..., :0], zeros, torch.zeros(b, h, n, dtype=torch.bool, device=device)


def _columns(colmask: torch.Tensor, block_size: int, seq_len: int):
    ar = torch.arange(seq_len, device=colmask.device)
    nv = int(colmask.sum(-1).max()) if colmask.numel() else 0
    cols = torch.sort(torch.where(colmask, ar, seq_len), -1).values[..., :nv].contiguous()
    n = -(-seq_len // block_size)
    ends = ((torch.arange(n, device=colmask.device) + 1) * block_size).clamp(max=seq_len)
    col_cnt = torch.searchsorted(cols, ends.expand(*cols.shape[:2], n).contiguous())
    return cols.int(), col_cnt.int()
