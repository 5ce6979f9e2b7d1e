"""One decode step over selected cache positions: gather-then-attend (reads only the kept keys) and its dense
masked reference (reads the whole cache), same signature.

``q [B, H_q, 1, D]``; cache ``k, v [B, H_kv, L, D]``; ``idx [B, H_s, N]`` int64 positions and ``valid [B, H_s, N]``
bool (or ``None``: all valid; no host synchronisation happens, so a step can be captured in a CUDA graph), where ``H_s`` is ``H_kv`` (one selection per key head, shared by its GQA group) or ``H_q`` (one per query head).
Returns ``[B, H_q, 1, D]``. Duplicate valid positions are not allowed (they would be counted twice).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from leanformer.nn.attention import attention


def _check(q, k, idx):
    hq, hk, hs = q.shape[1], k.shape[1], idx.shape[1]
    if hs not in (hq, hk):
        raise ValueError(f"selection heads ({hs}) must equal query heads ({hq}) or key/value heads ({hk})")
    return hq // hk


def gather_decode_reference(q, k, v, idx, valid, scale: float | None = None) -> torch.Tensor:
    """Dense attention over the whole cache with the selection as a boolean mask (fp32 softmax)."""
    g = _check(q, k, idx)
    b, hs, _ = idx.shape
    length = k.shape[2]
    mask = torch.zeros(b, hs, length + 1, dtype=torch.bool, device=q.device)
    mask.scatter_(-1, idx if valid is None else torch.where(valid, idx, length), True)
    mask = mask[..., :length]
    if hs != q.shape[1]:
        mask = mask.repeat_interleave(g, 1)
    return attention(q, k, v, causal=False, mask=mask[:, :, None, :], scale=scale, backend="math")


def gather_decode_attention(q, k, v, idx, valid, scale: float | None = None) -> torch.Tensor:
    """Gather the selected keys/values (``N`` per head, not ``L``) and attend with SDPA."""
    g = _check(q, k, idx)
    b, hk, length, d = k.shape
    hs, n = idx.shape[1:]
    safe = idx if valid is None else torch.where(valid, idx, 0)
    if hs == hk:
        ix = safe[..., None].expand(b, hk, n, d)
        kg, vg = torch.gather(k, 2, ix), torch.gather(v, 2, ix)
        mask = None if valid is None else valid.repeat_interleave(g, 1)[:, :, None, :]
        gqa = g > 1
    else:
        heads = torch.arange(hs, device=q.device)[None, :, None] // g
        flat = (heads * length + safe).reshape(b, hs * n, 1).expand(b, hs * n, d)
        kg = torch.gather(k.reshape(b, hk * length, d), 1, flat).reshape(b, hs, n, d)
        vg = torch.gather(v.reshape(b, hk * length, d), 1, flat).reshape(b, hs, n, d)
        mask = None if valid is None else valid[:, :, None, :]
        gqa = False
    return F.scaled_dot_product_attention(q, kg, vg, attn_mask=mask, scale=scale, enable_gqa=gqa)


def run_decode(q, k, v, idx, valid, scale, impl: str):
    """``impl``: ``"gather"`` (fast, any device) or ``"reference"``."""
    if impl == "reference":
        return gather_decode_reference(q, k, v, idx, valid, scale)
    return gather_decode_attention(q, k, v, idx, valid, scale)
