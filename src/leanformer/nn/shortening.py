"""Shortening and upsampling of a sequence of hidden states: THE one mechanism behind Hourglass (fixed factor k,
Nawrot et al., 2022) and Dynamic Token Pooling (variable segments, Nawrot et al., 2023).

Layout: hidden states are ``[B, T, D]``. Causality is the caller's contract, fixed here by *where a group ends*:

- Fixed factor ``k`` (Hourglass): the input is shifted right by ``k - 1`` (zeros in front) before grouping, so group
  ``j`` holds positions ``jk-k+1 .. jk`` (:func:`fixed_groups`) and ends at ``jk``. Upsampling hands group ``j`` to
  positions ``jk .. jk+k-1`` (all ``>= jk``), so no position sees a token after itself.
- Boundaries ``b [B, T]`` (Dynamic Token Pooling): a boundary at ``t`` ends a segment at ``t``; a segment is the mean of
  its characters (:func:`segment_mean`, scatter-add in O(T·D) memory, never a dense ``T × S`` matrix); position ``t``
  gets the latest segment that ended at or before ``t``, index ``cumsum(b)[t]`` into ``[null, seg_1, seg_2, ...]``
  (:func:`segment_gather`). Boundaries at ``t % k == 0`` reproduce the fixed groups (the test checks it).

Downsamplers map groups ``[B, S, k, D]`` to ``[B, S, D]``: :class:`AvgPool`, :class:`LinearPool` (concatenate k
vectors, project). Upsamplers map ``[B, S, D]`` to ``[B, S·k, D]``: :class:`RepeatUp`, :class:`LinearUp` (project to
k vectors). :class:`AttentionResample` is trax's ``AttentionResampling`` (Hourglass §3.2): on top of a base resampler,
``y = base + Attn(norm(base) -> norm(source))`` then ``y = y + FF(norm(y))``; queries see the source keys whose
position is ``<=`` their own (positions in original-token units), with an optional KV cache over the source.
"""

from __future__ import annotations

import torch
from torch import nn

from leanformer.nn.attention import KVCache, attention
from leanformer.nn.mlp import SwiGLU
from leanformer.nn.norm import RMSNorm
from leanformer.nn.rotary import Rotary, apply_rotary

__all__ = ["fixed_groups", "AvgPool", "LinearPool", "RepeatUp", "LinearUp", "AttentionResample", "segment_mean",
           "segment_gather", "DOWNSAMPLERS", "UPSAMPLERS"]


def fixed_groups(hist: torch.Tensor, j0: int, j1: int, k: int) -> torch.Tensor:
    """Groups ``j0..j1`` (inclusive) of ``hist [B, L, D]`` shifted right by ``k-1``: ``[B, j1-j0+1, k, D]`` where
    group ``j`` = ``hist[jk-k+1 .. jk]`` (zeros for negative positions). Needs ``L > j1·k``."""
    b, length, d = hist.shape
    if j1 * k >= length:
        raise ValueError(f"group {j1} of factor {k} ends at {j1 * k}, past the {length} positions given")
    padded = torch.cat([hist.new_zeros(b, k - 1, d), hist], dim=1) if k > 1 else hist
    return padded[:, j0 * k:(j1 + 1) * k].reshape(b, j1 - j0 + 1, k, d)


class AvgPool(nn.Module):
    """Average of each group: ``[B, S, k, D] -> [B, S, D]``."""

    def __init__(self, d: int, k: int):
        super().__init__()

    def forward(self, groups: torch.Tensor) -> torch.Tensor:
        return groups.mean(dim=2)


class LinearPool(nn.Module):
    """Concatenate the k vectors of a group and project back to ``D``: ``Linear(k·D -> D)``."""

    def __init__(self, d: int, k: int):
        super().__init__()
        self.proj = nn.Linear(k * d, d)

    def forward(self, groups: torch.Tensor) -> torch.Tensor:
        return self.proj(groups.flatten(2))


class RepeatUp(nn.Module):
    """Each shortened vector repeated ``k`` times: ``[B, S, D] -> [B, S·k, D]``."""

    def __init__(self, d: int, k: int):
        super().__init__()
        self.k = k

    def forward(self, short: torch.Tensor) -> torch.Tensor:
        return short.repeat_interleave(self.k, dim=1)


class LinearUp(nn.Module):
    """Project each shortened vector to ``k`` vectors: ``Linear(D -> k·D)``, reshaped to ``[B, S·k, D]``."""

    def __init__(self, d: int, k: int):
        super().__init__()
        self.k = k
        self.proj = nn.Linear(d, k * d)

    def forward(self, short: torch.Tensor) -> torch.Tensor:
        b, s, d = short.shape
        return self.proj(short).view(b, s * self.k, d)


DOWNSAMPLERS = {"avg": AvgPool, "linear": LinearPool}
UPSAMPLERS = {"repeat": RepeatUp, "linear": LinearUp}


class AttentionResample(nn.Module):
    """Attention resampling on top of a base resampler (Hourglass attention pooling / upsampling).

    ``source_kv(src [B, n, D], cache, pos)`` projects new source vectors to keys/values (and appends them to
    ``cache`` at ``pos``), returning the whole key/value prefix ``[B, H, L, Dh]``. ``forward(base [B, S, D], q_pos
    [S], k, v, k_pos [L])`` returns ``[B, S, D]``; query ``i`` sees key ``j`` iff ``k_pos[j] <= q_pos[i]``, and rotary
    uses those positions (original-token units). Every query must see at least one key.
    """

    def __init__(self, d: int, n_heads: int, d_ff: int, rope_theta: float = 10000.0, norm_eps: float = 1e-5,
                 backend: str = "sdpa"):
        super().__init__()
        self.n_heads, self.head_dim, self.backend = n_heads, d // n_heads, backend
        self.q_norm, self.kv_norm, self.ff_norm = RMSNorm(d, norm_eps), RMSNorm(d, norm_eps), RMSNorm(d, norm_eps)
        self.q_proj = nn.Linear(d, d, bias=False)
        self.k_proj = nn.Linear(d, d, bias=False)
        self.v_proj = nn.Linear(d, d, bias=False)
        self.o_proj = nn.Linear(d, d, bias=False)
        self.ff = SwiGLU(d, d_ff)
        self.rotary = Rotary(self.head_dim, rope_theta)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, Dh)

    def source_kv(self, src: torch.Tensor, k_pos: torch.Tensor, cache: KVCache | None = None, pos: int = 0):
        """Keys/values of ``src`` (positions ``k_pos`` [n]); with ``cache``, the whole prefix up to ``pos + n``."""
        s = self.kv_norm(src)
        cos, sin = self.rotary(k_pos, dtype=s.dtype)
        k, v = apply_rotary(self._heads(self.k_proj(s)), cos, sin), self._heads(self.v_proj(s))
        return cache.update(pos, k, v) if cache is not None else (k, v)

    def forward(self, base: torch.Tensor, q_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                k_pos: torch.Tensor) -> torch.Tensor:
        b, s, d = base.shape
        q = self._heads(self.q_proj(self.q_norm(base)))
        cos, sin = self.rotary(q_pos, dtype=q.dtype)
        mask = k_pos[None, :] <= q_pos[:, None]  # (S, L)
        y = attention(apply_rotary(q, cos, sin), k, v, causal=False, mask=mask, backend=self.backend)
        x = base + self.o_proj(y.transpose(1, 2).reshape(b, s, d))
        return x + self.ff(self.ff_norm(x))


def segment_mean(x: torch.Tensor, boundaries: torch.Tensor, n_segments: int | None = None) -> torch.Tensor:
    """Mean of each *completed* segment: ``x [B, T, D]``, ``boundaries [B, T]`` (0/1 values, may carry a
    straight-through gradient) -> ``[B, S, D]`` with ``S = n_segments`` (default: the most boundaries in a row);
    rows with fewer segments are zero-padded. Characters after a row's last boundary (an incomplete segment) are
    dropped. Memory O(B·(T+S)·D): scatter-add of segment sums and counts.

    Gradient to the boundaries as in the reference's dense assignment matrix ``M[t, s] = 1 - (s - c_t)`` at
    ``s = c_t``: each character's weight is ``1 + (c_t - c_t.detach())`` with ``c_t`` the boundaries before ``t``.
    """
    b, t, d = x.shape
    hard = boundaries.detach().round().long()
    seg = hard.cumsum(1) - hard  # segment index of each character (boundaries strictly before t)
    total = hard.sum(1, keepdim=True)
    if n_segments is None:
        n_segments = int(total.max()) if t else 0
    before = boundaries.cumsum(1) - boundaries
    w = (1.0 + (before - before.detach())).to(x.dtype)[..., None]  # value 1, gradient d/d boundaries
    # characters of an incomplete segment (or past n_segments) go to an overflow slot that is cut off
    idx = torch.where((seg < total) & (seg < n_segments), seg, torch.full_like(seg, n_segments))
    rows = torch.arange(b, device=x.device)[:, None]
    sums = x.new_zeros(b, n_segments + 1, d).index_put_((rows, idx), w * x, accumulate=True)
    counts = x.new_zeros(b, n_segments + 1, 1).index_put_((rows, idx), w, accumulate=True)
    return (sums / counts.clamp_min(1e-9))[:, :n_segments]


def segment_gather(short: torch.Tensor, boundaries: torch.Tensor) -> torch.Tensor:
    """Upsample ``short [B, S+1, D]`` (index 0 = the null vector, index ``c`` = segment ``c``) to ``[B, T, D]``:
    position ``t`` gets ``short[cumsum(boundaries)[t]]``, the latest segment that ended at or before ``t``."""
    idx = boundaries.detach().round().long().cumsum(1)
    return torch.gather(short, 1, idx[..., None].expand(-1, -1, short.shape[-1]))
