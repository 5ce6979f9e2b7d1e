"""SnapKV: keep the prompt keys that the prompt's last queries attend to, evict the rest.

After prefill, each prompt key is scored by the attention it receives from the last ``window`` queries (mean over
the window and the GQA group), smoothed by a 1-D average pool of width ``kernel``; each KV head keeps its top
``capacity`` keys, always with the first ``sinks`` tokens and the last ``local`` prompt tokens. Tokens generated
after the prompt are always kept. *SnapKV: LLM Knows What You are Looking for Before Generation* (Li et al., 2024);
defaults from *The Sparse Frontier* (Nawrot et al., 2025): capacity 1024 per KV head, window 256, kernel 21, local
128, 4 prefix tokens (original SnapKV: window 64, kernel 5).

Eviction is logical: the Hugging Face cache still stores every key, but decoding reads only the kept ones. Asked for
``sparsity`` s, ``capacity = ceil((1 - s) T)`` for a prompt of ``T`` tokens (all of it at s = 0: dense).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from leanformer.errors import UserError
from leanformer.sparse.base import DecodeMethod, check_sparsity, default_scale
from leanformer.sparse.decode.common import (
    check_step,
    decode_info,
    prompt_key_scores,
    resolve_impl,
    token_budget,
    topk_keep,
)
from leanformer.sparse.kernels.decode import run_decode


@dataclass(kw_only=True, slots=True)
class SnapKVParams:
    capacity: int = 1024
    window: int = 256
    kernel: int = 21
    local: int = 128
    sinks: int = 4
    impl: str = "auto"


class SnapKV(DecodeMethod):
    """``q [B, H_q, 1, D]``, cache ``[B, H_kv, L, D]`` -> ``([B, H_q, 1, D], info)``; needs ``observe_prefill``."""

    name = "snapkv"
    Params = SnapKVParams
    reduce = "mean"

    def observe_prefill(self, layer, q, k, v, scale=None):
        p = self.params
        scores = prompt_key_scores(q, k, p.window, default_scale(q, scale), self.reduce, p.kernel)
        w = min(p.window, k.shape[2])
        self.state[layer] = {"prompt_len": k.shape[2], "scores": scores, "kept": {},
                             "estimation": q.shape[0] * q.shape[1] * w * k.shape[2]}

    def forced(self, t: int, device) -> torch.Tensor:
        pos = torch.arange(t, device=device)
        return (pos < self.params.sinks) | (pos >= t - self.params.local)

    def keep(self, scores: torch.Tensor, capacity: int, exact_width: bool = True):
        """Kept prompt positions ``[B, H_kv, N]`` and their validity (None = all) for a per-head ``capacity``.
        ``exact_width=False``: ``N`` is a bound known on the host (no read of the device; Ada-SnapKV's heads keep
        different counts), the rows padded past their kept positions."""
        return topk_keep(scores, capacity, self.forced(scores.shape[-1], scores.device)), None

    def attend(self, layer, q, k, v, sparsity=None, scale=None):
        check_step(q, k)
        requested = check_sparsity(sparsity)
        st = self.state.get(layer)
        if st is None or "scores" not in st:
            raise UserError(f"{self.name} scores keys at prefill: call observe_prefill(layer={layer}, ...) first")
        t0, length = st["prompt_len"], k.shape[2]
        cap = token_budget(requested, self.params.capacity, t0)
        if cap not in st["kept"]:
            st["kept"][cap] = self.keep(st["scores"], cap)
        idx, valid = st["kept"][cap]
        b, hk = idx.shape[:2]
        if length > t0:
            new = torch.arange(t0, length, device=k.device).expand(b, hk, length - t0)
            idx = torch.cat([idx, new], -1)
            if valid is not None:
                valid = torch.cat([valid, torch.ones_like(new, dtype=torch.bool)], -1)
        impl = resolve_impl(self.params.impl, q)
        out = run_decode(q, k, v, idx, valid, default_scale(q, scale), impl)
        return out, decode_info(self.name, requested, idx, valid, length, 0, impl, capacity=cap)

