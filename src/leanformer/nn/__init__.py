"""Shared building blocks: norms, rotary positions, MLPs, causal self-attention with a backend choice."""

from leanformer.nn.attention import Attention, KVCache, attention, repeat_kv
from leanformer.nn.mlp import MLP, SwiGLU
from leanformer.nn.norm import LayerNorm, RMSNorm
from leanformer.nn.rotary import Rotary, apply_rotary

__all__ = ["Attention", "KVCache", "attention", "repeat_kv", "MLP", "SwiGLU", "LayerNorm", "RMSNorm", "Rotary",
           "apply_rotary"]
