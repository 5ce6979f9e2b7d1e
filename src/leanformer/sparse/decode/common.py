"""Helpers shared by the decode methods: budgets, key scores from the prompt's last queries, and ``info``."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from leanformer.errors import UserError
from leanformer.sparse.base import info_dict
from leanformer.sparse.kernels.tile_attention import triton

DECODE_IMPLS = ("auto", "triton", "gather", "reference")


def resolve_impl(impl: str, x: torch.Tensor) -> str:
    """``auto``: the fused Triton kernel on CUDA, else gather + SDPA."""
    if impl not in DECODE_IMPLS:
        raise UserError(f"unknown decode impl {impl!r}; choose one of {DECODE_IMPLS}")
    if impl == "auto":
        return "triton" if (x.is_cuda and triton is not None) else "gather"
    return impl


def check_step(q, k):
    if q.dim() != 4 or q.shape[2] != 1:
        raise UserError(f"decode attends one step: q must be [B, H_q, 1, D]; got {tuple(q.shape)}")
    if q.shape[1] % k.shape[1]:
        raise UserError(f"query heads ({q.shape[1]}) must be a multiple of key/value heads ({k.shape[1]})")


def token_budget(sparsity: float | None, native: int, length: int) -> int:
    """Keys to read per head: ``native`` when ``sparsity`` is None, else ``ceil((1 - s) L)``; within ``[1, L]``."""
    n = native if sparsity is None else math.ceil((1.0 - sparsity) * length - 1e-9)
    return max(1, min(int(n), length))


def prompt_key_scores(q, k, window: int, scale: float, reduce: str = "mean", kernel: int = 1):
    """Attention of the last ``window`` prompt queries on every prompt key, reduced over the window and the GQA
    group (``mean`` as in SnapKV, ``max`` as in Ada-KV), then smoothed by a 1-D pool of width ``kernel``.
    ``q [B, H_q, T_q, D]`` holds the last ``T_q <= T`` prompt queries, ``k [B, H_kv, T, D]`` -> ``[B, H_kv, T]``
    fp32. Batch rows are scored one at a time to bound memory."""
    b, hq, tq, d = q.shape
    hk, t = k.shape[1], k.shape[2]
    w = min(window, tq)
    pos = torch.arange(t - w, t, device=q.device)
    future = torch.arange(t, device=q.device)[None, :] > pos[:, None]
    rows = []
    for i in range(b):
        qw = q[i, :, tq - w:].reshape(hk, hq // hk, w, d).float()
        s = torch.matmul(qw, k[i, :, None].float().transpose(-1, -2)) * scale
        p = torch.softmax(s.masked_fill_(future, float("-inf")), -1)  # [H_kv, G, W, T]
        rows.append(p.mean((1, 2)) if reduce == "mean" else p.amax((1, 2)))
        del s, p
    p = torch.stack(rows)
    if kernel > 1:
        p = F.avg_pool1d(p, kernel, stride=1, padding=kernel // 2, count_include_pad=False)[..., :t]
    return p


def topk_keep(scores, n: int, forced) -> torch.Tensor:
    """Top ``n`` per row of ``scores [B, H, T]`` with ``forced [T]`` positions first; sorted positions ``[B, H, n]``."""
    s = torch.where(forced, float("inf"), scores)
    return torch.sort(torch.topk(s, n, dim=-1).indices, -1).values


def decode_info(method, requested, idx, valid, length, estimation, impl, **extra):
    """``keys_read`` = selected (head, position) pairs read; sparsity = fraction of the cache not read.
    ``valid=None`` means every entry of ``idx`` is read."""
    read = idx.numel() if valid is None else valid.sum()
    total = float(idx.shape[0] * idx.shape[1] * length)
    return info_dict(method, requested, read, total, estimation, impl, keys_read=read, keys_total=total, **extra)
