"""The ``k`` largest entries of each row: a plain-PyTorch reference (``topk_rows``) and one Triton launch
(``topk_rows_triton``), same signature and the same result, ties included; and block top-k's whole tile list built
on that selection (``block_tiles`` / ``block_tiles_triton``: the picks, each query block's diagonal and the counts,
in the same one launch; ``select_block_tiles`` dispatches).

Block top-k's estimation picks, for each query block, the best ``k`` key blocks out of ``NKB`` scores. On an H200
at 128K tokens (32 heads, 1024 x 1024 block scores per head) ``torch.topk`` on fp32 takes ~1.05 ms (a multi-pass
radix select: four passes of four launches), as long as a full ``torch.sort``, more than the scores and the pooling
together (``benchmarks/bench_block_estimation.py``). The kernel here is one program per row with the row in
registers (one warp per 1024 scores): a 32-step bisection over the scores' order-preserving integer keys finds the
``k``-th largest, then one prefix sum places the winners. No sort: the result comes in ascending index order,
which is all block top-k needs (which blocks, not their rank).

FlexPrefill's query-aware heads keep a different number of blocks in every query block: ``block_tiles_rows`` /
``block_tiles_rows_triton`` take the count per row (``k_rows``) and never pick the diagonal among the scored blocks
(it is placed once, last), with the tile list as wide as the row (no count read back to the host to size it).

Semantics (both paths): the ``k`` largest of each row of ``scores [..., N]`` (any float dtype), equal scores taken
lowest index first, returned as int32 ``[..., k]`` in ascending index order. ``+inf`` and ``-inf`` are ordinary
values (forced and forbidden blocks); rows holding NaN get an unspecified (but valid, distinct) choice.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from leanformer.sparse.kernels.tile_attention import INTERPRET, need_triton, triton

# one row lives in registers as int32 keys, 1024 per warp (up to 16 warps): 32 registers a thread; Quest's page
# scores of a 128K cache (8K pages of 16) are such rows
MAX_TRITON_ROW = 16384


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


def _check_square(scores: torch.Tensor) -> int:
    n = scores.shape[-1]
    if scores.shape[-2] != n:
        raise ValueError(f"block_tiles takes square block scores [..., NQB, NKB], got {tuple(scores.shape)}")
    return n


def _kmax(k: int, n: int) -> int:
    """Width of block top-k's tile list: ``k`` blocks, at least the three forced ones (sink, sub-diagonal, diagonal),
    at most all ``n``."""
    return min(max(k, min(n, 3)), n)


def place_diagonal(picks: torch.Tensor, cnt: torch.Tensor) -> torch.Tensor:
    """Tiles from off-diagonal ``picks [..., NQB, K]`` and counts ``cnt [..., NQB]``: one column more, query block
    ``i``'s diagonal ``i`` at entry ``cnt_i - 1`` (the last column 0 elsewhere); int32."""
    n = cnt.shape[-1]
    i = torch.arange(n, device=cnt.device, dtype=torch.int32).expand(cnt.shape)
    return F.pad(picks.int(), (0, 1)).scatter_(-1, (cnt.long() - 1)[..., None], i[..., None])


def block_tiles(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Block top-k's tiles from its biased block scores ``[..., NQB, NKB]`` (``NQB == NKB``; row ``i`` is query
    block ``i``): query block ``i`` keeps ``cnt_i = min(max(min(i + 1, 3), k), i + 1)`` blocks — the best
    ``cnt_i - 1`` off-diagonal ones (:func:`topk_rows` of ``kmax - 1``, ``kmax = min(max(k, 3), NKB)``) then its
    diagonal at entry ``cnt_i - 1``. Returns ``(tiles [..., NQB, kmax], cnt [..., NQB])`` int32; entries past
    ``cnt_i`` hold unused picks (the last column 0 where the diagonal is not there). The reference; the Triton
    kernel writes the same in its one launch (:func:`block_tiles_triton`)."""
    n = _check_square(scores)
    picks = topk_rows(scores, _kmax(k, n) - 1)
    i = torch.arange(n, device=scores.device)
    cnt = torch.clamp((i + 1).clamp(max=3), min=min(k, n)).minimum(i + 1).expand(picks.shape[:-1])
    return place_diagonal(picks, cnt), cnt.int().contiguous()


if triton is not None:
    import triton.language as tl

    @triton.jit
    def order_keys(x, valid):
        """Order-preserving int32 keys of fp32 ``x`` (-inf < ... < -0 = +0 < ... < +inf: the magnitude bits of
        negative floats flipped); entries not ``valid`` take the smallest int32, after every real key."""
        x = tl.where(x == 0.0, 0.0, x)  # -0 equals +0 (a tie, as in torch.sort)
        bits = x.to(tl.int32, bitcast=True)
        key = tl.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)
        return tl.where(valid, key, -2147483648)

    @triton.jit
    def _count_ge(key, tail, m, HAS_TAIL: tl.constexpr):
        """Keys of ``key`` (and of ``tail`` where ``HAS_TAIL``) at least ``m``."""
        n = tl.sum((key >= m).to(tl.int32), 0)
        if HAS_TAIL:
            n += tl.sum((tail >= m).to(tl.int32), 0)
        return n

    @triton.jit
    def _bisect(key, tail, K, lo, hi, HAS_TAIL: tl.constexpr, STEPS: tl.constexpr):
        """``STEPS`` bisection steps on ``[lo, hi]`` (int64) keeping :func:`kth_largest_key`'s invariant."""
        for _ in range(STEPS):
            mid = (lo + hi + 1) >> 1
            enough = _count_ge(key, tail, mid.to(tl.int32), HAS_TAIL) >= K
            lo = tl.where(enough, mid, lo)
            hi = tl.where(enough, hi, mid - 1)
        return lo, hi

    @triton.jit
    def kth_largest_key(key, K):
        """The ``K``-th largest of ``key`` by a 32-step bisection over int32 (each step one count; no sort).
        Invariant: at least ``K`` keys are ``>= lo`` and fewer than ``K`` are ``> hi``. (A four-pass radix select
        over 256-bin ``tl.histogram`` counts was slower: a 128K-cache Quest step took 0.123 ms on an H200 with it,
        results/sparse_decode-20261206T073059Z.json, against 0.079 ms on an H100 with this; a row of page scores
        crowds a few bins. A bisection between the row's smallest and largest key that stops at the first midpoint
        exactly ``K`` keys reach takes ~13 counts instead of 32, yet made the step slower: 0.081 against 0.071 ms at
        batch 1 and 0.452 against 0.425 ms at batch 16, same H100, results/decode_merge_topk-20261207T0748Z.json;
        where its time went was not profiled.)"""
        lo, _ = _bisect(key, key, K, tl.full((), -2147483648, tl.int64), tl.full((), 2147483647, tl.int64), False, 32)
        return lo.to(tl.int32)

    @triton.jit
    def kth_largest_key_split(key, tail, K):
        """:func:`kth_largest_key` of the union of ``key`` and a short ``tail`` (a few keys past a power of two):
        each step adds the tail's count, a reduction within one warp, to the row's."""
        lo, _ = _bisect(key, tail, K, tl.full((), -2147483648, tl.int64), tl.full((), 2147483647, tl.int64), True, 32)
        return lo.to(tl.int32)

    @triton.jit
    def kth_largest_key_compact(key, tail, K, SCR, HAS_TAIL: tl.constexpr, STEPS: tl.constexpr,
                                CAP: tl.constexpr):
        """:func:`kth_largest_key` (``HAS_TAIL``: :func:`kth_largest_key_split`) with fewer counts over the whole
        row: ``STEPS`` bisection steps between the row's smallest and largest key, then the keys still between
        the bounds, where there are at most ``CAP``, copied to ``SCR`` (``CAP`` int32 of scratch) and the search
        finished on them alone, a ``CAP``-wide count a step instead of the row's (with more candidates it goes on
        over the row). The keys above the upper bound are counted once and taken off ``K``."""
        lo = tl.min(key, 0)
        hi = tl.max(key, 0)
        if HAS_TAIL:
            lo = tl.minimum(lo, tl.min(tail, 0))
            hi = tl.maximum(hi, tl.max(tail, 0))
        lo, hi = _bisect(key, tail, K, lo.to(tl.int64), hi.to(tl.int64), HAS_TAIL, STEPS)
        lo32 = lo.to(tl.int32)
        hi32 = hi.to(tl.int32)
        above = tl.sum((key > hi32).to(tl.int32), 0)
        inr = (key >= lo32) & (key <= hi32)
        n_key = tl.sum(inr.to(tl.int32), 0)
        n = n_key
        if HAS_TAIL:
            above += tl.sum((tail > hi32).to(tl.int32), 0)
            inr_t = (tail >= lo32) & (tail <= hi32)
            n += tl.sum(inr_t.to(tl.int32), 0)
        if n <= CAP:
            tl.store(SCR + tl.cumsum(inr.to(tl.int32), 0) - 1, key, mask=inr)
            if HAS_TAIL:
                tl.store(SCR + n_key + tl.cumsum(inr_t.to(tl.int32), 0) - 1, tail, mask=inr_t)
            tl.debug_barrier()  # every thread's candidates are written before any thread reads them
            offs = tl.arange(0, CAP)
            small = tl.load(SCR + offs, mask=offs < n, other=-2147483648, cache_modifier=".cg")
            lo, hi = _bisect(small, small, K - above, lo, hi, False, 32 - STEPS)
        else:
            lo, hi = _bisect(key, tail, K, lo, hi, HAS_TAIL, 32 - STEPS)
        return lo.to(tl.int32)

    @triton.jit
    def _topk_rows_fwd(S, OUT, CNT, N, K, KREQ, TILES: tl.constexpr, NP: tl.constexpr):
        """One program per row: bisect for the ``K``-th largest key, then keep every larger key and the first
        ``K - #larger`` keys equal to it, written in index order (positions from a prefix sum). Keys are int32 and
        a row of up to 1024 sits in one warp, so each bisection step's count is a warp reduction (no barrier).
        ``TILES``: rows are query blocks (``N`` of them per head) and the output is :func:`block_tiles`' (width
        ``K + 1``, the diagonal at ``cnt - 1``, the count in ``CNT``)."""
        row = tl.program_id(0).to(tl.int64)
        offs = tl.arange(0, NP)
        valid = offs < N
        x = tl.load(S + row * N + offs, mask=valid, other=0.0).to(tl.float32)
        # padding has the highest index, so it comes after every real key of its value
        key = order_keys(x, valid)
        thr = kth_largest_key(key, K)
        gt = key > thr
        eq = key == thr
        need = K - tl.sum(gt.to(tl.int32), 0)
        take = gt | (eq & (tl.cumsum(eq.to(tl.int32), 0) <= need))
        pos = tl.cumsum(take.to(tl.int32), 0) - 1
        if TILES:
            i = (row % N).to(tl.int32)
            cnt = tl.minimum(tl.maximum(tl.minimum(i + 1, 3), KREQ), i + 1)
            base = OUT + row * (K + 1)
            tl.store(base + pos, offs, mask=take & (pos != cnt - 1))
            tl.store(base + cnt - 1, i)
            tl.store(base + K, 0, mask=cnt - 1 != K)
            tl.store(CNT + row, cnt)
        else:
            tl.store(OUT + row * K + pos, offs, mask=take)


def block_tiles_rows(scores: torch.Tensor, k_rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`block_tiles` with a count per query block, ``k_rows [..., NQB]`` (int): query block ``i`` keeps
    ``cnt_i = min(max(min(i + 1, 3), k_i), i + 1)`` blocks, the best ``cnt_i - 1`` of its causal off-diagonal
    blocks by score (the diagonal is never among them) and then its diagonal. Returns ``(tiles [..., NQB, NQB],
    cnt [..., NQB])`` int32, entries past ``cnt_i`` unspecified. The reference (a stable sort per row)."""
    n = _check_square(scores)
    i = torch.arange(n, device=scores.device)
    off = scores.float().masked_fill(i[None, :] >= i[:, None], float("-inf"))
    cnt = torch.minimum(torch.maximum(k_rows.long(), (i + 1).clamp(max=3)), i + 1)
    ranked = torch.sort(off, dim=-1, descending=True, stable=True).indices
    picks = torch.where(torch.arange(n, device=scores.device) < (cnt - 1)[..., None], ranked, n)
    picks = torch.sort(picks, -1).values.clamp(max=n - 1)  # index order, the unused ones after
    return place_diagonal(picks[..., :-1], cnt), cnt.int().contiguous()


if triton is not None:

    @triton.jit
    def _row_tiles_fwd(S, KROW, OUT, CNT, N, NP: tl.constexpr):
        """One program per query block ``i`` (row): keep ``cnt - 1`` of its causal off-diagonal blocks by the
        bisection of :func:`_topk_rows_fwd` and place the diagonal after them; rows are ``N`` wide."""
        row = tl.program_id(0).to(tl.int64)
        i = (row % N).to(tl.int32)
        offs = tl.arange(0, NP)
        x = tl.load(S + row * N + offs, mask=offs < N, other=0.0).to(tl.float32)
        key = order_keys(x, offs < i)  # the diagonal, the future and the padding are never picked
        cnt = tl.minimum(tl.maximum(tl.minimum(i + 1, 3), tl.load(KROW + row).to(tl.int32)), i + 1)
        k = cnt - 1
        thr = kth_largest_key(key, k)
        gt = key > thr
        eq = key == thr
        need = k - tl.sum(gt.to(tl.int32), 0)
        take = (gt | (eq & (tl.cumsum(eq.to(tl.int32), 0) <= need))) & (offs < i)
        pos = tl.cumsum(take.to(tl.int32), 0) - 1
        base = OUT + row * N
        tl.store(base + pos, offs, mask=take)
        tl.store(base + cnt - 1, i)
        tl.store(CNT + row, cnt)


def block_tiles_rows_triton(scores: torch.Tensor, k_rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`block_tiles_rows` in one launch (rows up to :data:`MAX_TRITON_ROW`)."""
    n = _check_square(scores)
    s, _ = _kernel_rows(scores, "block_tiles_rows")
    tiles = torch.empty(s.shape[0], n, device=scores.device, dtype=torch.int32)
    cnt = torch.empty(s.shape[0], device=scores.device, dtype=torch.int32)
    if s.shape[0]:
        np_ = max(16, 1 << (n - 1).bit_length())
        _row_tiles_fwd[(s.shape[0],)](s, k_rows.expand(scores.shape[:-1]).contiguous(), tiles, cnt, n, NP=np_,
                                      num_warps=max(1, np_ // 1024))
    return tiles.reshape(*scores.shape[:-1], n), cnt.reshape(scores.shape[:-1])


def topk_rows_triton(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The same selection in one launch (one program per row). Rows up to :data:`MAX_TRITON_ROW` long; fp32, bf16
    or fp16 scores (compared as fp32)."""
    _check(scores, k)
    s, n = _kernel_rows(scores, "topk_rows")
    out = torch.empty(s.shape[0], k, device=scores.device, dtype=torch.int32)
    if k and s.shape[0]:
        _launch(s, out, out, n, k, k, False)
    return out.reshape(*scores.shape[:-1], k)


def block_tiles_triton(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`block_tiles` in one launch: the selection, the diagonal's placement and the counts."""
    kmax = _kmax(k, _check_square(scores))
    _check(scores, kmax - 1)
    s, n = _kernel_rows(scores, "block_tiles")
    tiles = torch.empty(s.shape[0], kmax, device=scores.device, dtype=torch.int32)
    cnt = torch.empty(s.shape[0], device=scores.device, dtype=torch.int32)
    if s.shape[0]:
        _launch(s, tiles, cnt, n, kmax - 1, min(k, n), True)
    return tiles.reshape(*scores.shape[:-1], kmax), cnt.reshape(scores.shape[:-1])


def _kernel_rows(scores: torch.Tensor, reference: str) -> tuple[torch.Tensor, int]:
    """``scores`` as contiguous ``[rows, N]`` for the kernel, after checking it can run them."""
    need_triton(scores, f"{reference}_triton", reference)
    n = scores.shape[-1]
    if n > MAX_TRITON_ROW:
        raise ValueError(f"rows of {n} scores are longer than the kernel's {MAX_TRITON_ROW}; use {reference}")
    return scores.reshape(-1, n).contiguous(), n


def _launch(s, out, cnt, n: int, k: int, k_requested: int, tiles: bool) -> None:
    np_ = max(16, 1 << (n - 1).bit_length())
    _topk_rows_fwd[(s.shape[0],)](s, out, cnt, n, k, k_requested, TILES=tiles, NP=np_, num_warps=max(1, np_ // 1024))


def select_row_tiles(scores: torch.Tensor, k_rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`block_tiles_rows_triton` where it runs (CUDA or the interpreter), else :func:`block_tiles_rows`."""
    if triton is not None and (scores.is_cuda or INTERPRET) and scores.shape[-1] <= MAX_TRITON_ROW:
        return block_tiles_rows_triton(scores, k_rows)
    return block_tiles_rows(scores, k_rows)


def select_block_tiles(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`block_tiles_triton` where it runs (CUDA, rows up to :data:`MAX_TRITON_ROW`), else
    :func:`block_tiles`."""
    if triton is not None and scores.is_cuda and scores.shape[-1] <= MAX_TRITON_ROW:
        return block_tiles_triton(scores, k)
    return block_tiles(scores, k)
