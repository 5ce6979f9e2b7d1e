"""Pattern-estimation FLOPs of each sparse-attention method: the scoring that decides which pairs to keep.

Each entry of :data:`ESTIMATORS` maps a method name (the names of ``leanformer.sparse.PREFILL_METHODS`` /
``DECODE_METHODS``) to ``{phase: fn(shape, n, params) -> FLOPs}``; ``n`` is the prompt length for phase
``"prefill"`` and the cache length for one ``"decode"`` step. Same conventions as :mod:`leanformer.analysis.flops`
(multiply-add = 2, element-wise work of a softmax left out), summed over all heads and layers. Defaults follow the
defaults of ``leanformer.sparse`` (the Sparse Frontier configs, REFERENCE.md, except block size 64); ``params``
(the method's keyword arguments, as the harness stores them) override them.

- ``vertical_slash`` (MInference, Jiang et al., 2024): the last ``window`` queries (default 256) against all
  keys they may see, ``q·k`` only: ``2·D·H·L·(a·T − a(a−1)/2)``.
- ``flexprefill`` (Lai et al., 2025): the same with ``window`` 512 (default); the block-pooled divergence test
  works on pooled vectors and is negligible next to it.
- ``block_topk`` (block-sparse attention): mean-pool queries and keys in blocks of ``block_size`` (16): one add
  per element, ``(H + H_kv)·T·D·L``; then causal pooled scores ``2·D·H·L·nb(nb+1)/2`` with ``nb = ⌈T/b⌉``
  (``block_size`` default 64, as in ``leanformer.sparse``; the Sparse Frontier used 16).
- ``quest`` (Tang et al., 2024): per decode step, every page of ``page_size`` (16) keys is scored by
  ``Σ_d max(q_d·min_d, q_d·max_d)``: two products, a max and an add per channel, ``4·D·H·L·⌈C/p⌉``; building the
  page min/max at prefill is two comparisons per cached key channel, ``2·H_kv·D·T·L``.
- ``snapkv`` / ``ada_snapkv`` (Li et al., 2024; Feng et al., 2024): once after prefill, the last ``window`` (256)
  queries score all keys (``q·k``) and the scores are 1-D pooled with a ``kernel`` (21) kernel,
  ``H·L·T·k``; decode steps then read the kept cache with no extra scoring.
- ``dense``, ``streaming``: nothing to estimate.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from leanformer.errors import UserError


def _param(params: Mapping | None, default: int, *names: str) -> int:
    for name in names:
        if params and params.get(name) is not None:
            return int(params[name])
    return default


def _last_queries_pairs(t: int, a: int) -> int:
    """Causal pairs of the last ``a`` of ``t`` queries: query ``i`` sees ``i + 1`` keys."""
    a = min(a, t)
    return a * t - a * (a - 1) // 2


def _last_queries_flops(shape, t: int, a: int) -> float:
    return 2.0 * shape.head_dim * shape.n_heads * shape.n_layers * _last_queries_pairs(t, a)


def _vertical_slash(shape, t: int, params: Mapping | None) -> float:
    return _last_queries_flops(shape, t, _param(params, 256, "window", "approx", "last_q"))


def _flexprefill(shape, t: int, params: Mapping | None) -> float:
    return _last_queries_flops(shape, t, _param(params, 512, "window", "approx", "last_q"))


def _block_topk(shape, t: int, params: Mapping | None) -> float:
    b = _param(params, 64, "block_size", "block")
    nb = math.ceil(t / b)
    pooling = (shape.n_heads + shape.kv_heads) * t * shape.head_dim * shape.n_layers
    return float(pooling + 2 * shape.head_dim * shape.n_heads * shape.n_layers * nb * (nb + 1) // 2)


def _quest_prefill(shape, t: int, params: Mapping | None) -> float:
    return 2.0 * shape.kv_heads * shape.head_dim * t * shape.n_layers


def _quest_decode(shape, c: int, params: Mapping | None) -> float:
    pages = math.ceil(c / _param(params, 16, "page_size"))
    return 4.0 * shape.head_dim * shape.n_heads * shape.n_layers * pages


def _snapkv_prefill(shape, t: int, params: Mapping | None) -> float:
    window = _param(params, 256, "window")
    kernel = _param(params, 21, "kernel", "kernel_size")
    return _last_queries_flops(shape, t, window) + float(shape.n_heads * shape.n_layers * t * kernel)


Estimator = Callable[[Any, int, Mapping | None], float]

ESTIMATORS: dict[str, dict[str, Estimator]] = {
    "dense": {},
    "streaming": {},
    "vertical_slash": {"prefill": _vertical_slash},
    "flexprefill": {"prefill": _flexprefill},
    "block_topk": {"prefill": _block_topk},
    "quest": {"prefill": _quest_prefill, "decode": _quest_decode},
    "snapkv": {"prefill": _snapkv_prefill},
    "ada_snapkv": {"prefill": _snapkv_prefill},
}


def estimation_flops(shape, method: str | None, phase: str, n: int, params: Mapping | None = None) -> float:
    """Estimation FLOPs of ``method`` in ``phase`` (``"prefill"`` over ``n`` prompt tokens, ``"decode"`` for one
    step over ``n`` cached keys); 0 for ``None``/``"dense"`` and for phases a method does no scoring in."""
    if method is None:
        return 0.0
    if method not in ESTIMATORS:
        raise UserError(f"unknown sparse-attention method {method!r} for FLOP accounting; "
                        f"choose one of {', '.join(ESTIMATORS)}")
    fn = ESTIMATORS[method].get(phase)
    return float(fn(shape, int(n), params)) if fn else 0.0
