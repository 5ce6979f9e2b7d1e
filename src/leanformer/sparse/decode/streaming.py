"""Streaming decode (sinks + local window): the content-agnostic baseline; no scores are computed.

Each step reads the first ``sinks`` cache tokens and the last ``window`` ones. *Efficient Streaming Language Models
with Attention Sinks* (Xiao et al., 2024). Asked for ``sparsity`` s, the window is ``ceil((1 - s) L) - sinks``
(the whole cache at s = 0: dense).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from leanformer.sparse.base import DecodeMethod, check_sparsity, default_scale
from leanformer.sparse.decode.common import check_step, decode_info, resolve_impl, token_budget
from leanformer.sparse.kernels.decode import run_decode


@dataclass(kw_only=True, slots=True)
class StreamingDecodeParams:
    sinks: int = 4
    window: int = 1024
    impl: str = "auto"


class StreamingDecode(DecodeMethod):
    """``q [B, H_q, 1, D]``, cache ``[B, H_kv, L, D]`` -> ``([B, H_q, 1, D], info)``."""

    name = "streaming"
    Params = StreamingDecodeParams

    def attend(self, layer, q, k, v, sparsity=None, scale=None):
        check_step(q, k)
        requested = check_sparsity(sparsity)
        p = self.params
        b, hk, length, _ = k.shape
        n = token_budget(requested, p.sinks + p.window, length)
        sinks = min(p.sinks, n)
        dev = k.device
        pos = torch.cat([torch.arange(sinks, device=dev),
                         torch.arange(max(sinks, length - (n - sinks)), length, device=dev)])
        idx = pos.expand(b, hk, -1)
        valid = None
        impl = resolve_impl(p.impl, q)
        out = run_decode(q, k, v, idx, valid, default_scale(q, scale), impl)
        return out, decode_info(self.name, requested, idx, valid, length, 0, impl)
