"""Normalisation layers. RMSNorm computes in fp32 and casts back, as Llama and T5 do (needed for HF parity)."""

from __future__ import annotations

import torch
from torch import nn


class RMSNorm(nn.Module):
    """``x / rms(x) * weight`` over the last dim; statistics in fp32."""

    # Not torch.nn.RMSNorm: it applies the weight before casting back, so bf16 outputs differ from HF's by rounding.

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


class LayerNorm(nn.LayerNorm):
    """LayerNorm with an optional bias (``bias=False`` as in several efficient-training recipes)."""

    def __init__(self, dim: int, eps: float = 1e-5, bias: bool = True):
        super().__init__(dim, eps=eps, bias=bias)
