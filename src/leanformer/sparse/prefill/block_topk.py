"""Block-Sparse attention with top-k key blocks per query block.

Scores key blocks for each query block by the dot product of the mean-pooled query block and the mean-pooled key
block (no softmax), keeps the top-``topk`` blocks per query block, and always keeps the first (sink) block, the
diagonal block and the block just below it. This is the ``block_sparse`` baseline of *The Sparse Frontier: Sparse
Attention Trade-offs in Transformer LLMs* (Nawrot et al., 2025), itself after block-sparse attention as in
*MInference 1.0* (Jiang et al., 2024) and *Big Bird*-style block patterns.

Deviation, on purpose: the Sparse Frontier uses 16x16 blocks (64 blocks per query block, i.e. 1024 keys); tensor-core
kernels want larger tiles, so the default here is 128x128 blocks and ``topk=8`` (the same 1024-key budget).
Asked for ``sparsity`` s, ``topk`` becomes the largest uniform k whose kept pairs fit ``(1 - s)`` of the causal pairs
(rows that have fewer than k causal blocks keep them all).

Block size: ``block_size=None`` (the default) takes the largest tile of 128, 64, 32, 16 tokens whose forced blocks
(sink, sub-diagonal, diagonal: three per query block) fit the request at this length: 128 at long prompts, smaller
ones where a short prompt has too few blocks (at 1,000 tokens 128-token blocks reach only 0.46). A request no block
size reaches, or one that a block size the caller fixed does not, runs anyway and warns once per method instance
(:class:`leanformer.sparse.base.SparsityWarning`) with the reachable range; the measured sparsity is reported as always.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch

from leanformer.sparse.base import (
    PrefillMethod,
    SparsePrefillParams,
    causal_pairs,
    check_qkv,
    check_sparsity,
    default_scale,
    info_dict,
    pick_impl,
    unreachable_message,
)
from leanformer.sparse.kernels import TilePattern, run_pattern
from leanformer.sparse.kernels.block_select import place_diagonal, select_block_tiles
from leanformer.sparse.kernels.pattern import no_columns
from leanformer.sparse.kernels.tile_attention import BLOCK_SIZES as TILE_BLOCK_SIZES
from leanformer.sparse.prefill.estimate import pooled_block_scores


@dataclass(kw_only=True, slots=True)
class BlockTopKParams(SparsePrefillParams):
    topk: int = 8
    block_size: int | None = None  # None: from the length and the request (largest tile that reaches it)
    impl: str = "auto"
    # kernel options merged over the kernel's defaults: FlexAttention's (BLOCK_M, BLOCK_N, num_warps, num_stages, ...)
    # for impl "flex", the tile kernel's (BM, BN, num_warps, num_stages, USE_TMA) for impl "triton"
    kernel_options: dict | None = None


@lru_cache(maxsize=64)
def kept_for_k(n_blocks: int, block_size: int, seq_len: int, device=None) -> torch.Tensor:
    """Kept pairs when every query block keeps ``min(k, i + 1)`` blocks, for ``k = 1..NQB``: ``[NQB]`` float64.

    Cached per shape (read-only): the ``NQB x NQB`` table costs ~9 ms of host time at 128K tokens, which the GPU
    would otherwise spend idle between the block scores and the attention kernel."""
    i = torch.arange(n_blocks, device=device, dtype=torch.float64)
    rows = (seq_len - i * block_size).clamp(max=block_size)
    ks = torch.arange(1, n_blocks + 1, device=device, dtype=torch.float64)
    per = (torch.minimum(ks[:, None], i[None, :] + 1) - 1) * rows * block_size + rows * (rows + 1) / 2
    return per.sum(-1)


# block sizes ``block_size=None`` chooses from, largest first (those the tile kernel takes)
AUTO_BLOCK_SIZES = (128, 64, 32, 16)
FORCED_BLOCKS = 3  # per query block: the sink, the block below the diagonal and the diagonal


@lru_cache(maxsize=256)
def floor_pairs(block_size: int, seq_len: int) -> float:
    """Kept pairs when every query block keeps only its forced blocks: the least block top-k computes."""
    n = -(-seq_len // block_size)
    return float(kept_for_k(n, block_size, seq_len)[min(FORCED_BLOCKS, n) - 1])


@lru_cache(maxsize=256)
def choose_block_size(requested: float | None, seq_len: int, fixed: int | None) -> tuple[int, str | None]:
    """``(block size, warning or None)``: ``fixed`` if given, else the largest of :data:`AUTO_BLOCK_SIZES` whose
    forced blocks fit ``(1 - requested)`` of the causal pairs (128 with no request). The warning, when the request
    is out of reach of the size used, names the reason and the reachable range."""
    if requested is None:
        return (fixed or AUTO_BLOCK_SIZES[0]), None
    budget = (1 - requested) * causal_pairs(seq_len) * (1 + 1e-9) + 0.5
    sizes = (fixed,) if fixed else AUTO_BLOCK_SIZES
    for bs in sizes:
        if floor_pairs(bs, seq_len) <= budget:
            return bs, None
    bs = sizes[-1]
    reach = 1 - floor_pairs(bs, seq_len) / causal_pairs(seq_len)
    n = -(-seq_len // bs)
    why = (f"{n} blocks of {bs} tokens, each query block keeps at least its sink, diagonal and sub-diagonal blocks"
           + ("" if fixed else f"; {bs} is the smallest block size the kernels take"))
    return bs, unreachable_message("block_topk", requested, seq_len, reach, why)


@lru_cache(maxsize=256)
def uniform_k(sparsity: float, n_blocks: int, block_size: int, seq_len: int) -> int:
    """:func:`k_for_budget` of one uniform budget, ``(1 - sparsity)`` of the causal pairs: a host-side int, cached
    per shape (no device work, no sync; a tensor round trip here cost ~70 us of host time per call on an H100 box)."""
    budget = torch.tensor([[(1 - sparsity) * causal_pairs(seq_len)]], dtype=torch.float64)
    return int(k_for_budget(budget, n_blocks, block_size, seq_len))


def k_for_budget(budget: torch.Tensor, n_blocks: int, block_size: int, seq_len: int) -> torch.Tensor:
    """Largest uniform k (>= 1) whose kept pairs fit ``budget [B, H]``; returns long ``[B, H]``."""
    table = kept_for_k(n_blocks, block_size, seq_len, budget.device)
    k = torch.searchsorted(table, budget.double().contiguous() * (1 + 1e-9) + 0.5, right=True)
    return k.clamp(min=1, max=n_blocks)


@lru_cache(maxsize=16)
def topk_bias(n: int, device, groups: int = 1) -> torch.Tensor:
    """Additive ``[NQB, NKB]`` fp32 for block scores: ``-inf`` on future blocks and on the diagonal (kept apart, as
    the one partial block), ``+inf`` on the sink block and the block below the diagonal (forced), 0 elsewhere.
    ``groups > 1``: repeated for the query heads of a GQA group, ``[groups * NQB, NKB]`` (what the scores' batched
    matmul adds; cached, so no copy per call)."""
    i = torch.arange(n, device=device)
    forced = (i[None, :] == 0) | (i[None, :] == i[:, None] - 1)
    bias = torch.where(forced, float("inf"), torch.zeros((), device=device))
    bias = bias.masked_fill_(i[None, :] >= i[:, None], float("-inf"))
    return bias.repeat(groups, 1) if groups > 1 else bias


def block_pattern(scores: torch.Tensor, k_rows, block_size: int, seq_len: int) -> TilePattern:
    """Top key blocks of each query block by ``scores [B, H, NQB, NKB]`` biased with :func:`topk_bias` (future and
    diagonal ``-inf``, sink and sub-diagonal ``+inf``).

    Query block ``i`` keeps ``min(max(k, forced), i + 1)`` blocks for ``k_rows`` (an int, or ``[B, H, NQB]``):
    the best ``cnt - 1`` off-diagonal blocks (forced ones first), then its diagonal, last. An int ``k_rows`` takes the
    one-launch selection of :func:`leanformer.sparse.kernels.block_select.select_block_tiles` (tiles in index order);
    per-row counts take ``torch.topk`` (tiles by rank, since a row uses a prefix of its own length)."""
    b, h, n, _ = scores.shape
    if isinstance(k_rows, int):
        # every row uses either all kmax - 1 picks or (row i < kmax - 1) its i causal blocks, the lowest indices
        # among its picks (the rest score -inf): the set is enough, so one Triton launch, in index order
        tiles, cnt = select_block_tiles(scores, k_rows)
        return TilePattern(block_size, seq_len, cnt, *no_columns(b, h, n, scores.device), tiles=tiles,
                           diag_last=True)
    i = torch.arange(n, device=scores.device)
    cnt = torch.minimum(torch.maximum(k_rows, (i + 1).clamp(max=3)), i + 1)
    kmax = int(cnt.max())
    off = torch.topk(scores, kmax - 1, dim=-1).indices.int()  # rows use a prefix of their own length: by rank
    cnt = cnt.int().contiguous()
    return TilePattern(block_size, seq_len, cnt, *no_columns(b, h, n, scores.device), tiles=place_diagonal(off, cnt),
                       diag_last=True)


class BlockTopK(PrefillMethod):
    """``q [B, H_q, T, D]``, ``k, v [B, H_kv, T, D]`` -> ``([B, H_q, T, D], info)``; causal.

    Estimation is four launches on a GPU, none over ``T x T``: one mean-pool reduction each for q and k, one
    ``baddbmm`` (scores + the forced/causal bias, repeated for the GQA group once per shape), one Triton launch that
    selects each query block's tiles, places its diagonal and writes the counts (``kernels/block_select.py``). The
    FlexAttention path turns the tiles into a ``BlockMask`` of full blocks plus the causal diagonal
    (``kernels/flex_block.py``); the Triton path hands them to the tile kernel (``kernels/tile_attention.py``).
    ``impl="auto"`` on a GPU takes Triton (FlexAttention for block sizes the tile kernel does not take: it takes 16,
    32, 64 and 128; ``block_size=None`` picks one of those). Nothing in the call waits for the GPU (``info`` holds
    device tensors), so a model's layers queue back to back."""

    name = "block_topk"
    Params = BlockTopKParams

    def __call__(self, q, k, v, sparsity=None, scale=None):
        _, t = check_qkv(q, k, v)
        requested = check_sparsity(sparsity)
        p = self.params
        bs, warning = choose_block_size(requested, t, p.block_size)
        if warning:
            self.warn_once(warning)
        n = -(-t // bs)
        # auto on a GPU: the Triton tile kernel (H200, results/tile_kernel-20261205T194053Z.json: 1.80 vs 2.40 ms at
        # 32K / 0.9, 14.4 vs 16.0 ms at 128K / 0.95, and cheaper to launch), FlexAttention for other block sizes
        impl = pick_impl(p.impl, q, ("triton", "flex") if bs in TILE_BLOCK_SIZES else ("flex", "triton"))
        scale = default_scale(q, scale)
        b, h = q.shape[:2]
        scores = pooled_block_scores(q, k, bs, scale, bias=topk_bias(n, q.device, h // k.shape[1]))
        kk = p.topk if requested is None else uniform_k(requested, n, bs, t)
        pattern = block_pattern(scores, kk, bs, t)
        del scores
        out = run_pattern(q, k, v, pattern, scale, impl, kernel_options=p.kernel_options)
        kept = pattern.kept_pairs()
        total = causal_pairs(t)
        return out, info_dict(self.name, requested, kept.sum(), total * b * h, b * h * n * n, impl,
                              block_size=bs, per_head_sparsity=1 - kept / total, pattern=pattern)
