"""Ada-SnapKV: SnapKV scores with the cache budget shared adaptively across heads (Ada-KV).

Keys are scored as in SnapKV but reduced by the maximum over the window and the GQA group; the total budget
``capacity x H_kv`` (per batch row) is split by one global top-k over all heads, after guaranteeing every head
``max(floor x capacity, local + sinks)`` keys. *Ada-KV: Optimizing KV Cache Eviction by Adaptive Budget Allocation
for Efficient LLM Inference* (Feng et al., 2024) applied to *SnapKV* (Li et al., 2024); settings from *The Sparse
Frontier* (Nawrot et al., 2025): window 256, kernel 21, local 128, 4 prefix tokens, floor 0.2.

Heads keep different numbers of keys; the selection is padded to the largest head with a validity mask, and
``keys_read`` counts only valid ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from leanformer.sparse.decode.common import topk_keep
from leanformer.sparse.decode.snapkv import SnapKV


@dataclass(kw_only=True, slots=True)
class AdaSnapKVParams:
    capacity: int = 1024
    window: int = 256
    kernel: int = 21
    local: int = 128
    sinks: int = 4
    floor: float = 0.2
    impl: str = "auto"


class AdaSnapKV(SnapKV):
    """``q [B, H_q, 1, D]``, cache ``[B, H_kv, L, D]`` -> ``([B, H_q, 1, D], info)``; needs ``observe_prefill``."""

    name = "ada_snapkv"
    Params = AdaSnapKVParams
    reduce = "max"

    def keep(self, scores: torch.Tensor, capacity: int, exact_width: bool = True):
        p = self.params
        b, hk, t = scores.shape
        guaranteed = min(t, capacity, max(int(p.floor * capacity), min(p.local + p.sinks, t)))
        base = topk_keep(scores, guaranteed, self.forced(t, scores.device))
        taken = torch.zeros(b, hk, t, dtype=torch.bool, device=scores.device).scatter_(-1, base, True)
        extra = capacity * hk - guaranteed * hk
        if extra > 0:
            rest = torch.where(taken, float("-inf"), scores).reshape(b, hk * t)
            top = torch.topk(rest, min(extra, hk * t - guaranteed * hk), dim=-1).indices
            taken.reshape(b, hk * t).scatter_(-1, top, True)
        # the most any head keeps (a device read), or a bound the host knows: the guaranteed keys and every extra one
        n = int(taken.sum(-1).max()) if exact_width else min(t, guaranteed + max(extra, 0))
        pos = torch.arange(t, device=scores.device)
        idx = torch.sort(torch.where(taken, pos, t), -1).values[..., :n]
        valid = idx < t
        return torch.where(valid, idx, 0), valid
