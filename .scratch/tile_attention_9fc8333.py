"""Attention under a :class:`TilePattern`: a plain-PyTorch reference and a Triton fast path with the same signature.

``tile_attention(q, k, v, pattern, scale)``: ``q [B, H_q, T, D]``, ``k, v [B, H_kv, T, D]`` (GQA), pattern over
``(B, H_q)``; returns ``[B, H_q, T, D]`` in ``q.dtype``. Causal, top-left = bottom-right aligned (``T_q == T_k``).
A query row with no kept key (impossible here: the diagonal tile is always kept) would return zeros.

The Triton kernel is a FlashAttention-2 style forward (online softmax in fp32, exp2 with the scale folded into one
FMA per logit) with one program per ``BM`` query rows of a query block and ``batch x head``: it walks the kept
off-diagonal tiles (whole key blocks before the query block, ``BN`` keys per step: no mask, no bounds check, loads
software-pipelined and, with ``USE_TMA``, by TMA), then the diagonal tile under the causal mask (key steps wholly
after the program's rows skipped), then the kept columns in chunks of ``BN`` gathered by index, skipping columns that
a kept block diagonal already covers. Patterns whose tile lists put the diagonal elsewhere than where block top-k
(last) or the block-diagonal form (first) put it take a slower mode that checks every tile. Work is proportional to
the kept tiles and columns, never to ``T^2``; the pattern is ``O(B H (T / block + columns))`` integers.
"""

from __future__ import annotations

import functools
import os

import torch

from leanformer.errors import UserError
from leanformer.nn.attention import attention
from leanformer.sparse.kernels.pattern import TilePattern

try:
    import triton
    import triton.language as tl
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # CPU-only installs
    triton = None

# TRITON_INTERPRET=1 runs the kernel on CPU tensors (slow; used by the CPU tests to check the kernel's logic)
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def tile_attention_reference(q, k, v, pattern: TilePattern, scale: float | None = None) -> torch.Tensor:
    """Dense attention under ``pattern.to_mask()`` (fp32 softmax): the ground truth, ``O(T^2)`` memory.

    fp32 inputs go through PyTorch's SDPA with the boolean mask (fp32 throughout, ~2.4x faster than the explicit
    softmax on CPU at 2K tokens); half-precision inputs through the explicit fp32 softmax (``backend="math"``)."""
    mask = pattern.to_mask()
    backend = "sdpa" if q.dtype == torch.float32 else "math"
    return attention(q, k, v, causal=False, mask=mask, scale=scale, backend=backend)


if triton is not None:

    @triton.jit
    def _online_step(q, kt, vt, acc, l_i, m_i, qk_scale, ok, MASKED: tl.constexpr):
        """One block of keys into the online softmax; ``m_i`` stays in raw logit units (the scale is folded into the
        exponent, one FMA per logit). Unmasked blocks hold no ``-inf`` logit, so they skip the empty-row guard."""
        s = tl.dot(q, tl.trans(kt))
        if MASKED:
            s = tl.where(ok, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        if MASKED:
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        else:
            m_safe = m_new
        p = tl.exp2(s * qk_scale - (m_safe * qk_scale)[:, None])
        alpha = tl.exp2((m_i - m_safe) * qk_scale)
        acc = tl.dot(p.to(vt.dtype), vt, acc * alpha[:, None])  # accumulates in place (no second [BM, D] tile)
        l_i = l_i * alpha + tl.sum(p, 1)
        return acc, l_i, m_new

    @triton.jit
    def _bounded_step(q, k_base, v_base, offs_k, offs_m, offs_d, skt, svt, T, acc, l_i, m_i, qk_scale,
                      MASKED: tl.constexpr):
        """Keys ``offs_k`` loaded with a bounds check (the last block may be partial), the causal mask if
        ``MASKED``."""
        kt = tl.load(k_base + offs_k[:, None] * skt + offs_d[None, :], mask=offs_k[:, None] < T, other=0.0)
        vt = tl.load(v_base + offs_k[:, None] * svt + offs_d[None, :], mask=offs_k[:, None] < T, other=0.0)
        ok = (offs_k[None, :] <= offs_m[:, None]) & (offs_k[None, :] < T)
        return _online_step(q, kt, vt, acc, l_i, m_i, qk_scale, ok, MASKED)

    @triton.jit
    def _tile_attn_fwd(Q, K, V, KD, VD, O, TILES, TCNT, COLS, CCNT, BDIAG, qk_scale,
                       sqb, sqh, sqt, skb, skh, skt, svb, svh, svt, sob, soh, sot,
                       H, GROUP, T, NQB, KT, NV,
                       MODE: tl.constexpr, HAS_COLS: tl.constexpr, USE_TMA: tl.constexpr, STAGES: tl.constexpr,
                       WARP_SPECIALIZE: tl.constexpr,
                       BS: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, D: tl.constexpr):
        # one program per (BM query rows, batch x head); BS // BM programs share a query block and its tiles
        pid_m = tl.program_id(0) // (BS // BM)
        part = tl.program_id(0) % (BS // BM)
        pid_bh = tl.program_id(1)
        b = pid_bh // H
        h = pid_bh % H
        hk = h // GROUP
        offs_m = pid_m * BS + part * BM + tl.arange(0, BM)
        offs_n = tl.arange(0, BN)
        offs_d = tl.arange(0, D)
        q = tl.load(Q + b * sqb + h * sqh + offs_m[:, None] * sqt + offs_d[None, :], mask=offs_m[:, None] < T,
                    other=0.0)
        k_base = K + b * skb + hk * skh
        v_base = V + b * svb + hk * svh
        kv_row = (b * (H // GROUP) + hk) * T  # first row of this head in the [B * H_kv * T, D] descriptors
        m_i = tl.full([BM], float("-inf"), tl.float32)
        l_i = tl.zeros([BM], tl.float32)
        acc = tl.zeros([BM, D], tl.float32)
        row = pid_bh * NQB + pid_m
        n_t = tl.load(TCNT + row)
        if MODE == 0:  # explicit tiles, the diagonal anywhere in the list: every tile checks whether it needs masking
            for j in range(0, n_t):
                kb = tl.load(TILES + row * KT + j)
                for sub in tl.static_range(0, BS // BN):
                    offs_k = kb * BS + sub * BN + offs_n
                    if kb >= pid_m:  # only a diagonal (or future) tile needs the causal / end-of-sequence mask
                        acc, l_i, m_i = _bounded_step(q, k_base, v_base, offs_k, offs_m, offs_d, skt, svt, T, acc,
                                                      l_i, m_i, qk_scale, True)
                    else:
                        acc, l_i, m_i = _bounded_step(q, k_base, v_base, offs_k, offs_m, offs_d, skt, svt, T, acc,
                                                      l_i, m_i, qk_scale, False)
        else:
            # MODE 1: explicit tiles with the diagonal last (entries 0 .. n_t - 2 are off-diagonal);
            # MODE 2: block diagonals, ascending, diagonal 0 first (entries 1 .. n_t - 1 are off-diagonal).
            # Off-diagonal tiles are whole blocks before the query block: no mask, no bounds check, pipelined loads.
            lo = 1 if MODE == 2 else 0
            hi = n_t if MODE == 2 else n_t - 1
            for j in tl.range(lo, hi, num_stages=STAGES, warp_specialize=WARP_SPECIALIZE):
                if MODE == 2:
                    kb = pid_m - tl.load(TILES + pid_bh * KT + j)
                else:
                    kb = tl.load(TILES + row * KT + j)
                for sub in tl.static_range(0, BS // BN):
                    start = kb * BS + sub * BN
                    if USE_TMA:
                        kt = KD.load([kv_row + start, 0])
                        vt = VD.load([kv_row + start, 0])
                    else:
                        offs_k = start + offs_n
                        kt = tl.load(k_base + offs_k[:, None] * skt + offs_d[None, :])
                        vt = tl.load(v_base + offs_k[:, None] * svt + offs_d[None, :])
                    acc, l_i, m_i = _online_step(q, kt, vt, acc, l_i, m_i, qk_scale, offs_n, False)
            for sub in tl.static_range(0, BS // BN):  # the diagonal: causal and end-of-sequence mask
                if sub * BN < (part + 1) * BM:  # key steps wholly after this program's last row are skipped
                    acc, l_i, m_i = _bounded_step(q, k_base, v_base, pid_m * BS + sub * BN + offs_n, offs_m, offs_d,
                                                  skt, svt, T, acc, l_i, m_i, qk_scale, True)
        if HAS_COLS:
            n_c = tl.load(CCNT + row)
            for c in range(0, n_c, BN):
                offs_c = c + offs_n
                cm = offs_c < n_c
                cols = tl.load(COLS + pid_bh * NV + offs_c, mask=cm, other=0)
                d = pid_m - cols // BS
                cov = tl.load(BDIAG + pid_bh * NQB + d, mask=cm & (d >= 0), other=1)
                cm = cm & (cov == 0)
                kt = tl.load(k_base + cols[:, None] * skt + offs_d[None, :], mask=cm[:, None], other=0.0)
                vt = tl.load(v_base + cols[:, None] * svt + offs_d[None, :], mask=cm[:, None], other=0.0)
                ok = cm[None, :] & (cols[None, :] <= offs_m[:, None])
                acc, l_i, m_i = _online_step(q, kt, vt, acc, l_i, m_i, qk_scale, ok, True)
        l_safe = tl.where(l_i == 0.0, 1.0, l_i)
        out = acc / l_safe[:, None]
        tl.store(O + b * sob + h * soh + offs_m[:, None] * sot + offs_d[None, :], out.to(O.dtype.element_ty),
                 mask=offs_m[:, None] < T)


# Launch settings for 128-token blocks and head dim 128 (H100, bf16; benchmarks/bench_tile_kernel.py,
# results/tile_kernel-20261205T182653Z.json): whole 128-key tiles per step, TMA loads, two stages
DEFAULT_CONFIG = {"BM": 128, "BN": 128, "num_warps": 8, "num_stages": 2, "USE_TMA": True, "WARP_SPECIALIZE": False}


def resolve_config(block_size: int, config: dict | None = None) -> dict:
    """:data:`DEFAULT_CONFIG` under ``config``: ``BM`` query rows per program, ``BN`` keys per step (both cut to the
    block size and dividing it), 4 warps for blocks under 128 tokens."""
    bad = sorted(set(config or {}) - set(DEFAULT_CONFIG))
    if bad:
        raise UserError(f"unknown tile kernel option(s) {bad}; allowed: {sorted(DEFAULT_CONFIG)}")
    cfg = dict(DEFAULT_CONFIG)
    if block_size < 128:
        cfg["num_warps"] = 4
    cfg.update(config or {})
    for key in ("BM", "BN"):
        cfg[key] = min(cfg[key], block_size)
        if block_size % cfg[key]:
            raise UserError(f"tile kernel {key}={cfg[key]} must divide block_size {block_size}")
    return cfg


def _tma_ok(k: torch.Tensor, v: torch.Tensor) -> bool:
    """TMA loads need a Hopper-class GPU (or the interpreter) and 16-byte aligned K/V bases; otherwise pointer
    loads (the same kernel, ``USE_TMA=False``)."""
    if k.data_ptr() % 16 or v.data_ptr() % 16:
        return False
    return INTERPRET or _capability(k.device)[0] >= 9


@functools.lru_cache(maxsize=8)
def _capability(device: torch.device) -> tuple[int, int]:
    return torch.cuda.get_device_capability(device)


def tile_attention(q, k, v, pattern: TilePattern, scale: float | None = None, config: dict | None = None):
    """Triton fast path (CUDA): same contract as :func:`tile_attention_reference`. ``config``: launch settings
    (``BM`` query rows per program, ``BN`` keys per step, ``num_warps``, ``num_stages`` of the off-diagonal loop,
    ``USE_TMA`` for its K/V loads, where the GPU has TMA and the bases are aligned) over :data:`DEFAULT_CONFIG`."""
    if triton is None or not (q.is_cuda or INTERPRET):
        raise RuntimeError("tile_attention needs CUDA tensors and triton; use tile_attention_reference")
    b, h, t, d = q.shape
    if d not in (16, 32, 64, 128, 256):
        raise ValueError(f"head dim {d} not supported by the Triton kernel (power of two 16..256)")
    if pattern.block_size not in (16, 32, 64, 128):
        raise ValueError(f"block_size {pattern.block_size} not supported by the Triton kernel (16, 32, 64 or 128)")
    cfg = resolve_config(pattern.block_size, config)
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    o = torch.empty_like(q)
    scale = scale if scale is not None else d ** -0.5
    diag = pattern.diags is not None
    mode = 2 if diag else (1 if pattern.diag_last else 0)
    tiles = (pattern.diags if diag else pattern.tiles).contiguous()
    kt = tiles.shape[-1]
    nqb = pattern.n_blocks
    has_cols = pattern.cols.shape[-1] > 0
    if not has_cols:  # no column loop: COLS and BDIAG are never read (any valid int32 pointer fills the slots)
        cols = bdiag = pattern.tile_cnt
    else:
        cols, bdiag = pattern.cols.contiguous(), pattern.bdiag.to(torch.int8).contiguous()
    bs, bn = pattern.block_size, cfg["BN"]
    use_tma = cfg["USE_TMA"] and _tma_ok(k, v)
    if use_tma:
        kd = TensorDescriptor.from_tensor(k.view(-1, d), [bn, d])
        vd = TensorDescriptor.from_tensor(v.view(-1, d), [bn, d])
    else:
        kd, vd = k, v
    grid = (nqb * (bs // cfg["BM"]), b * h)
    _tile_attn_fwd[grid](
        q, k, v, kd, vd, o, tiles, pattern.tile_cnt.contiguous(), cols, pattern.col_cnt.contiguous(), bdiag,
        scale * 1.4426950408889634,
        *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *o.stride()[:3],
        h, h // k.shape[1], t, nqb, kt, cols.shape[-1],
        MODE=mode, HAS_COLS=has_cols, USE_TMA=use_tma, STAGES=cfg["num_stages"],
        WARP_SPECIALIZE=bool(cfg["WARP_SPECIALIZE"]), BS=bs, BM=cfg["BM"], BN=bn, D=d,
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )
    return o

