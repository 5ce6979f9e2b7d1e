"""Dense decode: every cache key is read (the baseline every decode method equals at sparsity 0)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from leanformer.sparse.base import DecodeMethod, check_sparsity, default_scale
from leanformer.sparse.decode.common import check_step, decode_info, resolve_impl
from leanformer.sparse.kernels.decode import run_decode


@dataclass(kw_only=True, slots=True)
class DenseDecodeParams:
    impl: str = "auto"


class DenseDecode(DecodeMethod):
    """``q [B, H_q, 1, D]``, cache ``[B, H_kv, L, D]`` -> ``([B, H_q, 1, D], info)``."""

    name = "dense"
    Params = DenseDecodeParams

    def attend(self, layer, q, k, v, sparsity=None, scale=None):
        check_step(q, k)
        requested = check_sparsity(sparsity)
        b, hk, length, _ = k.shape
        idx = torch.arange(length, device=k.device).expand(b, hk, length)
        valid = None
        impl = resolve_impl(self.params.impl, q)
        out = run_decode(q, k, v, idx, valid, default_scale(q, scale), impl)
        return out, decode_info(self.name, requested, idx, valid, length, 0, impl)
