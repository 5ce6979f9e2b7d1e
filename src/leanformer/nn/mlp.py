"""Feed-forward blocks: SwiGLU (Llama), gated-GELU (T5 v1.1) via ``act``, and a plain 2-layer MLP."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_ACTS = {"silu": F.silu, "gelu": lambda x: F.gelu(x, approximate="tanh"), "gelu_exact": F.gelu, "relu": F.relu}


class SwiGLU(nn.Module):
    """``down(act(gate(x)) * up(x))``; with ``act='gelu'`` this is T5 v1.1's gated-GELU."""

    def __init__(self, dim: int, hidden: int, act: str = "silu", bias: bool = False, dropout: float = 0.0):
        super().__init__()
        if act not in _ACTS:
            raise ValueError(f"unknown activation {act!r}; choose one of {sorted(_ACTS)}")
        self.gate = nn.Linear(dim, hidden, bias=bias)
        self.up = nn.Linear(dim, hidden, bias=bias)
        self.down = nn.Linear(hidden, dim, bias=bias)
        self.act = _ACTS[act]
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.dropout(self.act(self.gate(x)) * self.up(x)))


class MLP(nn.Module):
    """``down(act(up(x)))``: the classic Transformer feed-forward."""

    def __init__(self, dim: int, hidden: int, act: str = "gelu", bias: bool = True, dropout: float = 0.0):
        super().__init__()
        if act not in _ACTS:
            raise ValueError(f"unknown activation {act!r}; choose one of {sorted(_ACTS)}")
        self.up = nn.Linear(dim, hidden, bias=bias)
        self.down = nn.Linear(hidden, dim, bias=bias)
        self.act = _ACTS[act]
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.dropout(self.act(self.up(x))))
