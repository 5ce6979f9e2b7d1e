"""Pattern estimation shared by the prefill methods: what to keep, decided from a few scores.

* :func:`vs_scores` - MInference's estimate: softmax attention of the last ``window`` queries over all keys (causal
  inside the window), summed down columns (vertical score) and along diagonals (slash score).
* :func:`pooled_block_scores` - mean-pooled query blocks against mean-pooled key blocks (Block-Sparse, FlexPrefill's
  query-aware branch).
* :func:`select_by_cost` - keep items in priority order while their cumulative cost fits a per-head budget.

Layout ``[B, H, T, D]``; GQA is handled by grouping query heads over their key head, never by copying keys.
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F


def vs_scores(q, k, window: int, scale: float, tail: int = 0, max_elems: int = 1 << 30):
    """Vertical and slash importance from the last ``window`` queries.

    Returns ``(vertical [B, H_q, T], slash [B, H_q, T], probs_tail)`` in fp32, vertical and slash each summing to 1
    per head; ``slash[..., o]`` scores the diagonal ``key = query - o``. ``probs_tail [B, H_q, T]`` is the attention
    of the last ``tail`` queries, averaged (FlexPrefill's query-aware test), or ``None`` when ``tail == 0``.
    Logits come from one matmul per key head in the input dtype (the ``G`` query heads of a group stacked as rows;
    ``scale`` folded into the window queries, as MInference's estimate), the softmax reads them and writes fp32, and
    the sums are fp32. Work is ``O(W x T)`` per head in about ten launches per chunk of key heads, with no sort or
    scatter: column sums are one reduction, diagonal sums a second one over a strided view (see
    :func:`_diagonal_sums`). Key heads go ``max_elems`` probabilities (``W x T`` fp32 per query head) at a time.
    """
    b, hq, t, d = q.shape
    hk = k.shape[1]
    g = hq // hk
    w = min(window, t)
    tail = min(w, tail)
    qw = (q[:, :, t - w:] * scale).reshape(b, hk, g * w, d)
    kt = k.transpose(-1, -2)
    # only the last w keys can lie in a window query's future
    future = torch.ones(w, w, dtype=torch.bool, device=q.device).triu_(1)
    vert, rev_slash, ptail = [], [], []
    step = max(1, min(hk, max_elems // max(1, b * g * w * t)))
    for s0 in range(0, hk, step):
        s = torch.matmul(qw[:, s0:s0 + step], kt[:, s0:s0 + step]).unflatten(2, (g, w))  # [B, hk', G, W, T]
        s[..., t - w:].masked_fill_(future, float("-inf"))
        p = torch.softmax(s, dim=-1, dtype=torch.float32)
        del s
        vert.append(p.sum(-2))
        if tail:
            ptail.append(p[..., w - tail:, :].mean(-2))
        rev_slash.append(_diagonal_sums(p))
        del p
    vert = torch.cat(vert, 1).reshape(b, hq, t) / w
    slash = torch.cat(rev_slash, 1).reshape(b, hq, t).flip(-1) / w
    ptail = torch.cat(ptail, 1).reshape(b, hq, t) if tail else None
    return vert, slash, ptail


def window_scores(q, k, window: int, scale: float, tail: int = 0, impl: str = "reference"):
    """:func:`vs_scores` through its fused Triton twin (:func:`leanformer.sparse.kernels.vs_estimate.
    vs_scores_triton`) for ``impl="triton"``, else the PyTorch reference."""
    if impl == "triton":
        from leanformer.sparse.kernels.vs_estimate import vs_scores_triton

        return vs_scores_triton(q, k, window, scale, tail)
    return vs_scores(q, k, window, scale, tail)


def _diagonal_sums(p):
    """``p [..., W, T]`` (row ``r`` is query ``T - W + r``, causal zeros above) -> ``[..., T]`` whose entry
    ``T - 1 - o`` is the sum of ``p`` along the diagonal ``key = query - o`` (reversed: the caller flips once).

    Row ``r``'s key ``r + c`` lies at flat offset ``r (T + 1) + c``, so for ``o <= T - W`` (``c = T - W - o``) the
    diagonal is the column ``c`` of a ``[W, T - W + 1]`` view with row stride ``T + 1``: one reduction, no copy.
    The other ``W - 1`` diagonals only touch the first ``W - 1`` keys; they come from the small corner
    ``p[..., 1:, :W-1]`` padded on the left, the same skew on ``W x W`` elements."""
    *lead, w, t = p.shape
    p = p.contiguous()
    main = p.as_strided((*lead, w, t - w + 1), (*p.stride()[:-2], t + 1, 1)).sum(-2)
    if w == 1:
        return main
    n = w - 1
    corner = F.pad(p[..., 1:, :n], (n - 1, 0))  # [..., n, 2n - 1]
    skew = corner.as_strided((*lead, n, n), (*corner.stride()[:-2], 2 * n, 1)).sum(-2)
    return torch.cat([skew, main], -1)


def pool_blocks(x, block_size: int):
    """Mean over each block of ``block_size`` positions (the last block may be partial): ``[B, H, N, D]`` fp32.

    One reduction over a view of ``x`` in its own dtype, accumulating in fp32 (no fp32 copy, no padding copy); a
    partial last block is a second, small reduction."""
    t = x.shape[2]
    full = t // block_size
    parts = []
    if full:
        parts.append(x[:, :, :full * block_size].unflatten(2, (full, block_size)).mean(-2, dtype=torch.float32))
    if t % block_size:
        parts.append(x[:, :, full * block_size:].mean(-2, keepdim=True, dtype=torch.float32))
    return parts[0] if len(parts) == 1 else torch.cat(parts, 2)


@lru_cache(maxsize=16)
def _causal_bias(n: int, device) -> torch.Tensor:
    ar = torch.arange(n, device=device)
    zero = torch.zeros((), device=device)
    return torch.where(ar[None, :] > ar[:, None], float("-inf"), zero)


def pooled_block_scores(q, k, block_size: int, scale: float, bias=None):
    """Mean-pooled query block . mean-pooled key block, ``[B, H_q, NQB, NKB]`` fp32.

    ``bias`` (additive ``[NQB, NKB]`` fp32, or already repeated for the ``G`` heads of a group as ``[G * NQB, NKB]``;
    default: ``-inf`` on future blocks) is added inside the one batched
    matmul per key head (``baddbmm``; the ``G`` query heads of a group are stacked as rows), so forcing or dropping
    blocks costs no extra pass over the scores."""
    b, hq, _, d = q.shape
    hk = k.shape[1]
    g = hq // hk
    qp = pool_blocks(q, block_size)
    n = qp.shape[-2]
    kp = pool_blocks(k, block_size)
    bias = _causal_bias(n, q.device) if bias is None else bias
    # the G query heads of a group share one bias: [G * NQB, NKB] (given so, it is used as is: no copy per call)
    rows = bias if bias.shape[-2] == g * n else bias.expand(g, n, n).reshape(g * n, n)
    s = torch.baddbmm(rows, qp.reshape(b * hk, g * n, d), kp.reshape(b * hk, n, d).transpose(-1, -2), alpha=scale)
    return s.reshape(b, hq, n, n)


def select_by_cost(priority, cost, budget):
    """Keep items in ascending ``priority`` while the running sum of ``cost`` stays within ``budget``.

    ``priority, cost`` ``[B, H, N]``; ``budget`` ``[B, H]``. Items with ``-inf`` priority (forced) go first and are
    kept regardless. Returns a boolean ``[B, H, N]``."""
    order = torch.argsort(priority, dim=-1, stable=True)
    c = torch.gather(cost.double().expand_as(priority), -1, order)
    cum = torch.cumsum(c, -1)
    forced = torch.gather(priority, -1, order) == float("-inf")
    keep_sorted = (cum <= budget[..., None].double() * (1 + 1e-9) + 0.5) | forced
    keep = torch.zeros_like(keep_sorted)
    return keep.scatter_(-1, order, keep_sorted)


@lru_cache(maxsize=64)
def diagonal_cost(n_blocks: int, block_size: int, seq_len: int, device=None):
    """Pairs computed by block diagonal ``d`` over all query blocks, ``[NQB]`` float64. Built on the host and cached
    per shape and device (read-only): a value read back from the GPU here would stall every prefill call."""
    d = torch.arange(n_blocks, dtype=torch.float64)
    cost = block_size * (seq_len - d * block_size)
    rows = (seq_len - d * block_size).clamp(max=block_size)
    cost[0] = float((rows * (rows + 1) / 2).sum())
    return cost.clamp(min=0).to(device)


def slash_to_diagonals(slash_rank, block_size: int, n_blocks: int):
    """First activation rank of each block diagonal: offset ``o`` crosses block diagonals ``floor(o/bs)`` and
    ``ceil(o/bs)``. ``slash_rank [B, H, T]`` (lower = better) -> ``[B, H, NQB]``."""
    t = slash_rank.shape[-1]
    o = torch.arange(t, device=slash_rank.device)
    lo, hi = o // block_size, (o + block_size - 1) // block_size
    first = torch.full((*slash_rank.shape[:2], n_blocks + 1), float("inf"), device=slash_rank.device)
    r = slash_rank.float()
    first.scatter_reduce_(-1, lo.expand_as(r), r, "amin")
    first.scatter_reduce_(-1, hi.clamp(max=n_blocks).expand_as(r), r, "amin")
    return first[..., :n_blocks]
