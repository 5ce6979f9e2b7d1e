"""Causal self-attention with a backend choice, and a tiny preallocated KV cache.

Layout everywhere: ``q, k, v`` are ``[B, H, T, D]`` (PyTorch SDPA layout); keys/values may have fewer heads than
queries (grouped-query attention, ``H_q`` a multiple of ``H_kv``). Causal alignment is bottom-right: query ``i`` of
``T_q`` sees keys ``j <= i + (T_k - T_q)``, which is what decoding with a cache needs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from leanformer.nn.rotary import apply_rotary

# "sdpa" lets PyTorch pick; "cudnn"/"flash"/"efficient" force that SDPA kernel (GPU); "math" is the explicit
# fp32 softmax(QK^T)V reference in this file.
BACKENDS = ("sdpa", "cudnn", "flash", "efficient", "math")
_SDPA_FORCED = {"cudnn": "CUDNN_ATTENTION", "flash": "FLASH_ATTENTION", "efficient": "EFFICIENT_ATTENTION"}


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """``[B, H_kv, T, D]`` -> ``[B, H_kv * n_rep, T, D]`` (each KV head serves ``n_rep`` query heads)."""
    if n_rep == 1:
        return x
    b, h, t, d = x.shape
    return x[:, :, None].expand(b, h, n_rep, t, d).reshape(b, h * n_rep, t, d)


def causal_mask(t_q: int, t_k: int, device=None) -> torch.Tensor:
    """Boolean ``[T_q, T_k]`` mask, True = may attend; bottom-right aligned."""
    i = torch.arange(t_q, device=device)[:, None] + (t_k - t_q)
    j = torch.arange(t_k, device=device)[None, :]
    return j <= i


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = True,
              mask: torch.Tensor | None = None, scale: float | None = None, backend: str = "sdpa",
              dropout_p: float = 0.0) -> torch.Tensor:
    """Attention over ``[B, H, T, D]`` tensors (GQA allowed). ``mask``: boolean, True = keep, broadcastable to
    ``[B, H, T_q, T_k]``; combined with the causal mask when ``causal``. Returns ``[B, H_q, T_q, D]``."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; choose one of {BACKENDS}")
    hq, hk = q.shape[1], k.shape[1]
    if hq % hk:
        raise ValueError(f"query heads ({hq}) must be a multiple of key/value heads ({hk})")
    k, v = repeat_kv(k, hq // hk), repeat_kv(v, hq // hk)
    t_q, t_k = q.shape[-2], k.shape[-2]
    if causal and (mask is not None or t_q != t_k):
        cm = causal_mask(t_q, t_k, q.device)
        mask = cm if mask is None else (mask & cm)
        causal = False
    if backend == "sdpa":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, scale=scale,
                                              dropout_p=dropout_p)
    if backend in _SDPA_FORCED:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel(getattr(SDPBackend, _SDPA_FORCED[backend])):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, scale=scale,
                                                  dropout_p=dropout_p)
    scale = scale if scale is not None else 1.0 / math.sqrt(q.shape[-1])
    s = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale
    if causal:
        mask = causal_mask(t_q, t_k, q.device)
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    p = torch.softmax(s, dim=-1)
    if dropout_p:
        p = F.dropout(p, dropout_p)
    return torch.matmul(p, v.float()).to(q.dtype)


class KVCache(nn.Module):
    """Preallocated ``[B, H_kv, max_len, D]`` keys/values; ``update(pos, k, v)`` writes and returns the prefix."""

    def __init__(self, batch: int, n_kv_heads: int, max_len: int, head_dim: int, dtype=torch.float32, device=None):
        super().__init__()
        shape = (batch, n_kv_heads, max_len, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def update(self, pos: int, k: torch.Tensor, v: torch.Tensor):
        t = k.shape[-2]
        if pos + t > self.k.shape[-2]:
            raise ValueError(f"KV cache overflow: position {pos + t} > capacity {self.k.shape[-2]}")
        self.k[:, :, pos:pos + t] = k
        self.v[:, :, pos:pos + t] = v
        return self.k[:, :, :pos + t], self.v[:, :, :pos + t]


class Attention(nn.Module):
    """Multi-head causal self-attention with GQA and rotary; projections named as in HF Llama."""

    def __init__(self, dim: int, n_heads: int, n_kv_heads: int | None = None, head_dim: int | None = None,
                 bias: bool = False, backend: str = "sdpa", dropout: float = 0.0):
        super().__init__()
        self.n_heads = n_heads
        self.n_kv_heads = n_kv_heads or n_heads
        self.head_dim = head_dim or dim // n_heads
        self.backend = backend
        self.dropout = dropout
        self.q_proj = nn.Linear(dim, self.n_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(dim, self.n_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(dim, self.n_kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, dim, bias=bias)

    def forward(self, x: torch.Tensor, cos: torch.Tensor | None = None, sin: torch.Tensor | None = None,
                cache: KVCache | None = None, pos: int = 0, mask: torch.Tensor | None = None) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)  # (B, Hq, T, D)
        k = self.k_proj(x).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, Hkv, T, D)
        v = self.v_proj(x).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        if cos is not None:
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if cache is not None:
            k, v = cache.update(pos, k, v)
        y = attention(q, k, v, causal=True, mask=mask, backend=self.backend,
                      dropout_p=self.dropout if self.training else 0.0)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, -1))
