"""Training-free sparse attention: prefill and decode methods, fast kernels, and one attach point for Hugging Face
causal LMs (Llama / Qwen2 / Mistral families).

Layout ``[B, H, T, D]`` with grouped-query attention; *sparsity* is the measured fraction of causal query-key pairs
(decode: cache keys) not computed. Methods follow *The Sparse Frontier* (Nawrot et al., 2025).

    from leanformer import sparse
    out, info = sparse.prefill_attention(q, k, v, "vertical_slash", sparsity=0.9)
    out, info = sparse.decode_attention(q1, k_cache, v_cache, "quest", sparsity=0.9375)
    with sparse.apply(model, prefill="vertical_slash", decode="quest", sparsity=0.9) as session:
        model.generate(...)
"""

from __future__ import annotations

from leanformer.sparse.hf import SparseSession, apply
from leanformer.sparse.registry import DECODE_METHODS, PREFILL_METHODS, build_decode, build_prefill


def prefill_attention(q, k, v, method: str = "dense", sparsity: float | None = 0.0, scale: float | None = None,
                      **params):
    """Causal attention of ``q [B, H_q, T, D]`` over ``k, v [B, H_kv, T, D]`` with a sparse prefill ``method``.

    ``sparsity``: target fraction of causal pairs to skip, in ``[0, 1)``; ``None`` uses the method's native budget
    parameters (``**params``). Returns ``(out [B, H_q, T, D], info)``; ``info["sparsity"]`` is measured,
    ``info["requested_sparsity"]`` echoes the request, ``info["estimation_pairs"]`` counts the scoring work."""
    return build_prefill(method, **params)(q, k, v, sparsity=sparsity, scale=scale)


def decode_attention(q, k, v, method: str = "dense", sparsity: float | None = 0.0, scale: float | None = None,
                     prompt=None, **params):
    """One decode step: ``q [B, H_q, 1, D]`` over the cache ``k, v [B, H_kv, L, D]``.

    Methods that score the prompt (SnapKV, Ada-SnapKV) need ``prompt=(q_prompt, k_prompt, v_prompt)``; the cache
    is assumed to start with that prompt. Returns ``(out [B, H_q, 1, D], info)``."""
    m = build_decode(method, **params)
    if prompt is not None:
        m.observe_prefill(0, *prompt, scale=scale)
    return m.attend(0, q, k, v, sparsity=sparsity, scale=scale)


__all__ = ["PREFILL_METHODS", "DECODE_METHODS", "prefill_attention", "decode_attention", "apply", "SparseSession",
           "build_prefill", "build_decode"]
