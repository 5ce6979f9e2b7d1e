"""Dense causal attention: the reference every sparse method must equal at sparsity 0 (PyTorch SDPA)."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from leanformer.sparse.base import PrefillMethod, causal_pairs, check_qkv, check_sparsity, info_dict


@dataclass(kw_only=True, slots=True)
class DenseParams:
    impl: str = "auto"


class Dense(PrefillMethod):
    """``[B, H_q, T, D]`` x ``[B, H_kv, T, D]`` -> ``[B, H_q, T, D]``, causal; sparsity is always 0."""

    name = "dense"
    Params = DenseParams

    def __call__(self, q, k, v, sparsity=None, scale=None):
        _, t = check_qkv(q, k, v)
        requested = check_sparsity(sparsity)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=q.shape[1] != k.shape[1])
        total = causal_pairs(t) * q.shape[0] * q.shape[1]
        return out, info_dict(self.name, requested, total, total, 0, "sdpa")
