"""The parallel (training / prefill) half of Dynamic Memory Compression, as plain tensor functions.

Nawrot et al., "Dynamic Memory Compression: Retrofitting LLMs for Accelerated Inference" (ICML 2024). Per key/value
head and token ``t`` a decision ``alpha_t`` says whether token ``t`` is *appended* as a new cache slot
(``alpha_t = 0``) or *merged* into the last slot (``alpha_t = 1``) by an ``omega``-weighted average:

    k_sum <- alpha_t * k_sum + omega_t * k_t      (v_sum, w_sum alike: w_sum <- alpha_t * w_sum + omega_t)
    slot  =  k_sum / w_sum

Training sees every *partial* state of that recurrence at once: the state after token ``t`` is
``sum_j (prod_{i=j+1..t} alpha_i) omega_j k_j / sum_j (...) omega_j`` over ``j`` in a window of ``window`` tokens
(:func:`partial_states`), and a query at ``t`` attends to the partial state of key ``j < t`` with the additive bias
``log(1 - alpha_{j+1})`` (a state that the next token merged into is superseded; the diagonal is never masked,
:func:`merge_bias`). With hard decisions and merge groups capped at ``window`` tokens (:func:`cap_merges`) this is
exactly what decoding with the compressed cache computes.

Layout: ``k, v [B, H, T, D]`` (one head axis = key/value heads), decisions and weights ``[B, H, T]``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def logistic_noise(shape, device, generator: torch.Generator | None = None) -> torch.Tensor:
    """Samples of Logistic(0, 1) = the difference of two Gumbel(0, 1) variables (Gumbel-sigmoid noise)."""
    u = torch.rand(shape, device=device, generator=generator).clamp_(1e-6, 1 - 1e-6)
    return torch.log(u) - torch.log1p(-u)


def relaxed_decisions(logit: torch.Tensor, temperature: float, noise: bool = True,
                      generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Gumbel-sigmoid ``alpha = sigmoid((logit + L) / temperature)`` with ``L ~ Logistic(0, 1)``.

    Returns ``(alpha, log(1 - alpha))``; the second is computed as ``logsigmoid(-z)``, finite with a finite
    gradient even where ``alpha`` rounds to 1. The first token's decision is forced to 0 (the first token appends).
    """
    z = logit.float()
    if noise:
        z = z + logistic_noise(z.shape, z.device, generator)
    z = z / temperature
    first = torch.ones_like(z)
    first[..., 0] = 0.0
    return torch.sigmoid(z) * first, F.logsigmoid(-z)


def cap_merges(merge: torch.Tensor, window: int) -> torch.Tensor:
    """Hard decisions ``merge [..., T]`` (bool) with token 0 appending and merge groups capped at ``window`` tokens.

    A run of ``r`` consecutive merges after an append makes a group of ``r + 1`` tokens; the ``window``-th merge
    of a run (and every ``window``-th after it) is turned into an append, as the decoder does when a slot is full.
    """
    m = merge.clone()
    m[..., 0] = False
    c = m.long().cumsum(-1)
    at_last_append = torch.where(m, torch.zeros_like(c), c).cummax(-1).values
    run = c - at_last_append  # consecutive merges ending at t
    return m & (run % window != 0)


def _shift(x: torch.Tensor, s: int, dim: int) -> torch.Tensor:
    """``x`` moved ``s`` steps later along ``dim`` (zeros enter at the start)."""
    if s == 0:
        return x
    pad = [0, 0] * (x.dim() - 1 - (dim % x.dim())) + [s, 0]
    return F.pad(x, pad).narrow(dim, 0, x.shape[dim])


def partial_states(k: torch.Tensor, v: torch.Tensor, alpha: torch.Tensor, omega: torch.Tensor, window: int):
    """Every partial accumulation of the merge recurrence, in parallel over ``T``, truncated to ``window`` tokens.

    ``k, v [B, H, T, D]``, ``alpha, omega [B, H, T]`` (``alpha[..., 0] == 0``). Returns ``(k_state, v_state,
    k_sum, v_sum, w_sum)``: the normalised states ``[B, H, T, D]`` and the unnormalised sums (``w_sum [B, H, T]``)
    that the decoder keeps for the last slot. One windowed view (``unfold``) of the last ``window`` tokens of every
    position and a weighted sum over it, in fp32: about twenty tensor ops forward whatever the window (the loop of
    :func:`partial_states_reference` launches ~15 per window step, which dominates a small model's training step).
    Memory: a ``[B, H, T, 2D, window]`` fp32 temporary.
    """
    dtype = torch.promote_types(k.dtype, torch.float32)
    a, w = alpha.to(dtype), omega.to(dtype)
    # [..., T, window]: index j holds token t - (window - 1) + j (zeros before the sequence start)
    a_win = F.pad(a, (window - 1, 0)).unfold(-1, window, 1)
    w_win = F.pad(w, (window - 1, 0)).unfold(-1, window, 1)
    # weight of token t - o in the state after t: prod_{i=t-o+1..t} alpha_i * omega_{t-o}; the product runs from
    # the newest token back (column window - 1 is token t itself, weight omega_t)
    decay = torch.cumprod(a_win[..., 1:].flip(-1), -1).flip(-1)
    coef = w_win * torch.cat([decay, torch.ones_like(a_win[..., :1])], -1)
    kv = torch.cat([k.to(dtype), v.to(dtype)], -1)
    kv_win = F.pad(kv, (0, 0, window - 1, 0)).unfold(-2, window, 1)  # [..., T, 2D, window]
    sums = (kv_win * coef[..., None, :]).sum(-1)
    k_sum, v_sum = sums.split(k.shape[-1], -1)
    w_sum = coef.sum(-1)
    k_state = (k_sum / w_sum[..., None]).to(k.dtype)
    v_state = (v_sum / w_sum[..., None]).to(v.dtype)
    return k_state, v_state, k_sum, v_sum, w_sum


def partial_states_reference(k: torch.Tensor, v: torch.Tensor, alpha: torch.Tensor, omega: torch.Tensor,
                             window: int):
    """:func:`partial_states` as ``window`` shifted multiply-adds of ``[B, H, T, D]`` (the ground truth)."""
    dtype = torch.promote_types(k.dtype, torch.float32)
    a, w = alpha.to(dtype), omega.to(dtype)
    k32, v32 = k.to(dtype), v.to(dtype)
    k_sum, v_sum, w_sum = w[..., None] * k32, w[..., None] * v32, w
    decay = torch.ones_like(a)
    for o in range(1, window):
        decay = decay * _shift(a, o - 1, -1)  # prod_{i=t-o+1..t} alpha_i
        coef = decay * _shift(w, o, -1)
        k_sum = k_sum + coef[..., None] * _shift(k32, o, -2)
        v_sum = v_sum + coef[..., None] * _shift(v32, o, -2)
        w_sum = w_sum + coef
    k_state = (k_sum / w_sum[..., None]).to(k.dtype)
    v_state = (v_sum / w_sum[..., None]).to(v.dtype)
    return k_state, v_state, k_sum, v_sum, w_sum


def merge_bias(log1m_alpha: torch.Tensor) -> torch.Tensor:
    """Additive attention bias ``[B, H, T, T]`` from ``log(1 - alpha) [B, H, T]``.

    Query ``t`` sees key state ``j < t`` with bias ``log(1 - alpha_{j+1})``, its own state (``j = t``) with 0, and
    nothing after it (``-inf``).
    """
    t = log1m_alpha.shape[-1]
    nxt = torch.cat([log1m_alpha[..., 1:], torch.zeros_like(log1m_alpha[..., :1])], dim=-1)
    bias = nxt[..., None, :].expand(*log1m_alpha.shape[:-1], t, t)
    i = torch.arange(t, device=log1m_alpha.device)
    diag, future = i[None, :] == i[:, None], i[None, :] > i[:, None]
    bias = bias.masked_fill(diag, 0.0)
    return bias.masked_fill(future, float("-inf"))


def dmc_attention(q: torch.Tensor, k_state: torch.Tensor, v_state: torch.Tensor, bias: torch.Tensor,
                  dropout_p: float = 0.0) -> torch.Tensor:
    """Attention of ``q [B, H_q, T, D]`` over key/value states ``[B, H_kv, T, D]`` with the merge bias
    ``[B, H_kv, T, T]`` (shared by the query heads of a GQA group). Returns ``[B, H_q, T, D]``."""
    g = q.shape[1] // k_state.shape[1]
    if g > 1:
        k_state = k_state.repeat_interleave(g, 1)
        v_state = v_state.repeat_interleave(g, 1)
        bias = bias.repeat_interleave(g, 1)
    return F.scaled_dot_product_attention(q, k_state, v_state, attn_mask=bias.to(q.dtype), dropout_p=dropout_p)
