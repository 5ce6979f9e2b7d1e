"""Rotary position embeddings (RoPE), Llama convention (``rotate_half`` over two halves of the head dim).

Positions may be any float tensor, so shortened layers (Hourglass, pooling) can use positions measured in
original-token units, and DMC can exclude channels by rotating only the first ``rot_dim`` channels.
"""

from __future__ import annotations

import torch
from torch import nn


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """``[x1, x2] -> [-x2, x1]`` over the last dim's two halves (the Llama / Hugging Face convention)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x [B, H, T, D]`` by ``cos/sin [T, R]`` or ``[B, 1, T, R]`` (R <= D; channels past R untouched)."""
    r = cos.shape[-1]
    if r == x.shape[-1]:
        return (x * cos + rotate_half(x) * sin).to(x.dtype)
    xr, xp = x[..., :r], x[..., r:]
    return torch.cat(((xr * cos + rotate_half(xr) * sin).to(x.dtype), xp), dim=-1)


class Rotary(nn.Module):
    """Computes ``cos, sin`` of shape ``[T, rot_dim]`` for given positions (cached for integer ranges)."""

    def __init__(self, rot_dim: int, theta: float = 10000.0):
        super().__init__()
        if rot_dim % 2:
            raise ValueError(f"rotary dim must be even, got {rot_dim}")
        inv_freq = 1.0 / (theta ** (torch.arange(0, rot_dim, 2, dtype=torch.float32) / rot_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.rot_dim = rot_dim

    def forward(self, positions: torch.Tensor, dtype: torch.dtype = torch.float32):
        """``positions``: ``[T]`` or ``[B, T]`` (ints or floats) -> ``cos, sin`` of ``[T, R]`` or ``[B, 1, T, R]``."""
        freqs = positions.to(torch.float32)[..., None] * self.inv_freq.to(positions.device)
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos().to(dtype), emb.sin().to(dtype)
        if positions.dim() == 2:
            cos, sin = cos[:, None], sin[:, None]
        return cos, sin
