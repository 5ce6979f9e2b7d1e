"""Pattern estimation shared by the prefill methods: what to keep, decided from a few scores.

* :func:`vs_scores` - MInference's estimate: softmax attention of the last ``window`` queries over all keys (causal
  inside the window), summed down columns (vertical score) and along diagonals (slash score).
* :func:`pooled_block_scores` - mean-pooled query blocks against mean-pooled key blocks (Block-Sparse, FlexPrefill's
  query-aware branch).
* :func:`select_by_cost` - keep items in priority order while their cumulative cost fits a per-head budget.

Layout ``[B, H, T, D]``; GQA is handled by grouping query heads over their key head, never by copying keys.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def vs_scores(q, k, window: int, scale: float, tail: int = 0, head_chunk: int = 8):
    """Vertical and slash importance from the last ``window`` queries.

    Returns ``(vertical [B, H_q, T], slash [B, H_q, T], probs_tail)`` in fp32, vertical and slash each summing to 1
    per head; ``slash[..., o]`` scores the diagonal ``key = query - o``. ``probs_tail [B, H_q, T]`` is the attention
    of the last ``tail`` queries, averaged (FlexPrefill's query-aware test), or ``None`` when ``tail == 0``.
    Logits come from a matmul in the input dtype (fp32 accumulation inside, as MInference's estimate); softmax and
    sums are fp32. Query heads are processed ``head_chunk`` at a time to bound memory (``W x T`` fp32 per head).
    """
    b, hq, t, d = q.shape
    hk = k.shape[1]
    g = hq // hk
    w = min(window, t)
    tail = min(w, tail)
    qw = q[:, :, t - w:].reshape(b, hk, g, w, d)
    # only the last w keys can lie in a window query's future
    future = torch.ones(w, w, dtype=torch.bool, device=q.device).triu_(1)
    vert, slash, ptail = [], [], []
    step = max(1, head_chunk // g)
    for s0 in range(0, hk, step):
        s = torch.matmul(qw[:, s0:s0 + step], k[:, s0:s0 + step, None].transpose(-1, -2)).float()
        s.mul_(scale)[..., t - w:].masked_fill_(future, float("-inf"))
        p = torch.softmax(s, dim=-1)  # [B, hk', G, W, T]
        del s
        vert.append(p.sum(-2))
        if tail:
            ptail.append(p[..., w - tail:, :].mean(-2))
        # diagonal sums: row r (position t - w + r) shifted right by (w - 1 - r) turns diagonals into columns
        padded = F.pad(p, (w - 1, 0))
        del p
        lead = padded.shape[:-2]
        skew = padded.as_strided((*lead, w, t), (*padded.stride()[:-2], t + w, 1))
        slash.append(skew.sum(-2).flip(-1))
        del padded, skew
    vert = torch.cat(vert, 1).reshape(b, hq, t) / w
    slash = torch.cat(slash, 1).reshape(b, hq, t) / w
    ptail = torch.cat(ptail, 1).reshape(b, hq, t) if tail else None
    return vert, slash, ptail


def pool_blocks(x, block_size: int):
    """Mean over each block of ``block_size`` positions (the last block may be partial): ``[B, H, N, D]``."""
    b, h, t, d = x.shape
    n = -(-t // block_size)
    pad = n * block_size - t
    xs = F.pad(x.float(), (0, 0, 0, pad)).reshape(b, h, n, block_size, d).sum(-2)
    counts = torch.full((n,), float(block_size), device=x.device)
    counts[-1] = block_size - pad
    return xs / counts[:, None]


def pooled_block_scores(q, k, block_size: int, scale: float):
    """Mean-pooled query block . mean-pooled key block, ``[B, H_q, NQB, NKB]`` fp32 (future blocks ``-inf``)."""
    b, hq = q.shape[:2]
    hk = k.shape[1]
    qp = pool_blocks(q, block_size).reshape(b, hk, hq // hk, -1, q.shape[-1])
    kp = pool_blocks(k, block_size)[:, :, None]
    s = (torch.matmul(qp, kp.transpose(-1, -2)) * scale).reshape(b, hq, qp.shape[-2], kp.shape[-2])
    n = s.shape[-1]
    ar = torch.arange(n, device=q.device)
    return s.masked_fill_(ar[None, :] > ar[:, None], float("-inf"))


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


def diagonal_cost(n_blocks: int, block_size: int, seq_len: int, device=None):
    """Pairs computed by block diagonal ``d`` over all query blocks, ``[NQB]`` float64."""
    d = torch.arange(n_blocks, device=device, dtype=torch.float64)
    cost = block_size * (seq_len - d * block_size)
    rows = (seq_len - d * block_size).clamp(max=block_size)
    cost[0] = float((rows * (rows + 1) / 2).sum())
    return cost.clamp(min=0)


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
