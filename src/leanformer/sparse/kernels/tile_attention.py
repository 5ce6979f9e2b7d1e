"""Attention under a :class:`TilePattern`: a plain-PyTorch reference and a Triton fast path with the same signature.

``tile_attention(q, k, v, pattern, scale)``: ``q [B, H_q, T, D]``, ``k, v [B, H_kv, T, D]`` (GQA), pattern over
``(B, H_q)``; returns ``[B, H_q, T, D]`` in ``q.dtype``. Causal, top-left = bottom-right aligned (``T_q == T_k``).
A query row with no kept key (impossible here: the diagonal tile is always kept) would return zeros.

The Triton kernel is a FlashAttention-2 style forward (online softmax in fp32, exp2 with the scale folded into one
FMA per logit) with one program per ``BM`` query rows of a query block and ``batch x head``: it walks the kept
tiles in one software-pipelined loop (``BN`` keys per step, loads by TMA with ``USE_TMA``), the diagonal tile's loads
prefetched like the others' and only that tile under the causal mask (off-diagonal tiles are whole key blocks before
the query block: no mask, no bounds check), then the kept columns of earlier key blocks in chunks of ``BN`` gathered
by index, in a second software-pipelined loop that masks only the chunks holding a column a kept block diagonal
already covers (or the count's end). Patterns whose tile lists put the diagonal elsewhere than where
block top-k (last) or the block-diagonal form (first) put it take a slower mode that checks every tile. Work is
proportional to the kept tiles and columns, never to ``T^2``; the pattern is ``O(B H (T / block + columns))``
integers.
"""

from __future__ import annotations

import functools
import os

import torch

from leanformer.errors import UserError
from leanformer.nn.attention import attention
from leanformer.nn.gpu import fix_interpreter_bf16_dot
from leanformer.sparse.kernels.pattern import TilePattern

try:
    import triton
    import triton.language as tl
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # CPU-only installs
    triton = None

fix_interpreter_bf16_dot()  # under TRITON_INTERPRET=1 only

# TRITON_INTERPRET=1 runs the kernel on CPU tensors (slow; used by the CPU tests to check the kernel's logic)
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def on_gpu(x: torch.Tensor) -> bool:
    """Whether a compiled Triton launch can take ``x``: triton is installed and ``x`` is a CUDA tensor."""
    return triton is not None and x.is_cuda


def need_triton(x: torch.Tensor, name: str, instead: str) -> None:
    """Refuses a launch ``name`` that cannot take ``x`` (no triton, or a CPU tensor outside the interpreter), naming
    the reference to call ``instead``."""
    if triton is None or not (x.is_cuda or INTERPRET):
        raise RuntimeError(f"{name} needs CUDA tensors and triton; use {instead}")


# the reference's strip of query rows holds at most this many mask entries (B x H x rows x keys): a 2K-token
# prompt is one strip, as before; a long one is walked strip by strip in O(rows x T) memory, never O(T^2)
REFERENCE_STRIP = 1 << 25


def tile_attention_reference(q, k, v, pattern: TilePattern, scale: float | None = None) -> torch.Tensor:
    """Attention under the pattern's mask (fp32 softmax): the ground truth.

    Query blocks go in strips of whole blocks whose mask (:meth:`TilePattern.to_mask` of those rows against the
    keys up to them) holds at most ``REFERENCE_STRIP`` entries, so memory is ``O(rows x T)``. fp32 inputs go through
    PyTorch's SDPA with the boolean mask (fp32 throughout, ~2.4x faster than the explicit softmax on CPU at 2K
    tokens); half-precision inputs through the explicit fp32 softmax (``backend="math"``)."""
    backend = "sdpa" if q.dtype == torch.float32 else "math"
    b, h, t, _ = q.shape
    bs, n = pattern.block_size, pattern.n_blocks
    per = max(1, REFERENCE_STRIP // max(1, b * h * bs * t))
    if per >= n:
        return attention(q, k, v, causal=False, mask=pattern.to_mask(), scale=scale, backend=backend)
    out = torch.empty_like(q)
    for i0 in range(0, n, per):
        i1 = min(n, i0 + per)
        r0, r1 = i0 * bs, min(i1 * bs, t)
        out[:, :, r0:r1] = attention(q[:, :, r0:r1], k[:, :, :r1], v[:, :, :r1], causal=False,
                                     mask=pattern.to_mask((i0, i1)), scale=scale, backend=backend)
    return out


if triton is not None:

    @triton.jit
    def _softmax_update(s, vt, acc, l_i, m_i, qk_scale, GUARD: tl.constexpr):
        """Logits ``s`` of one block of keys into the online softmax; ``m_i`` stays in raw logit units (the scale is
        folded into the exponent, one FMA per logit). ``GUARD``: a row may have no finite logit yet (``-inf`` max)."""
        m_new = tl.maximum(m_i, tl.max(s, 1))
        if GUARD:
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        else:
            m_safe = m_new
        p = tl.exp2(s * qk_scale - (m_safe * qk_scale)[:, None])
        alpha = tl.exp2((m_i - m_safe) * qk_scale)
        acc = tl.dot(p.to(vt.dtype), vt, acc * alpha[:, None])  # accumulates in place (no second [BM, D] tile)
        l_i = l_i * alpha + tl.sum(p, 1)
        return acc, l_i, m_new

    @triton.jit
    def _online_step(q, kt, vt, acc, l_i, m_i, qk_scale, ok, MASKED: tl.constexpr):
        """One block of keys, masked by ``ok`` if ``MASKED`` (then a row may have no kept key yet)."""
        s = tl.dot(q, tl.trans(kt))
        if MASKED:
            s = tl.where(ok, s, float("-inf"))
        return _softmax_update(s, vt, acc, l_i, m_i, qk_scale, MASKED)

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
    def _tile_attn_fwd(Q, K, V, KD, VD, KCD, VCD, O, TILES, TCNT, COLS, CCNT, BDIAG, TILES2, HEADS, KT2, qk_scale,
                       sqb, sqh, sqt, skb, skh, skt, svb, svh, svt, sob, soh, sot,
                       H, GROUP, T, NQB, KT, NV,
                       MODE: tl.constexpr, HAS_COLS: tl.constexpr, USE_TMA: tl.constexpr, STAGES: tl.constexpr,
                       BS: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, D: tl.constexpr,
                       COL_STAGES: tl.constexpr = 0, COL_MASK: tl.constexpr = 0, COL_COPY: tl.constexpr = 0):
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
            # MODE 1: explicit tiles with the diagonal last; MODE 2: block diagonals, ascending, diagonal 0 first;
            # MODE 3: per head, explicit tiles (TILES2, diagonal last) or block diagonals (TILES), as HEADS says.
            # One software-pipelined loop over whole key blocks (TMA loads with USE_TMA), the diagonal's loads
            # prefetched like any other; only the diagonal tile takes the causal mask, which also covers keys past
            # the end of the sequence (pointer loads clamp their rows, TMA reads zeros or the next head's rows: all
            # masked, weight exactly 0). No row is ever empty: the diagonal's first key step holds the block's first
            # key, which every row of the block sees, so the first step any row takes has a finite logit. With
            # BN < BS and BM < BS (not the default), diagonal key steps wholly after a program's rows are computed
            # and masked rather than skipped.
            if MODE == 3:
                tiled = tl.load(HEADS + pid_bh).to(tl.int32)
            for j in tl.range(0, n_t, num_stages=STAGES):
                if MODE == 2:
                    kb = pid_m - tl.load(TILES + pid_bh * KT + j)
                elif MODE == 3:
                    kb = tl.where(tiled != 0, tl.load(TILES2 + row * KT2 + j, mask=tiled != 0, other=0),
                                  pid_m - tl.load(TILES + pid_bh * KT + j, mask=tiled == 0, other=0))
                else:
                    kb = tl.load(TILES + row * KT + j)
                for sub in tl.static_range(0, BS // BN):
                    start = kb * BS + sub * BN
                    if USE_TMA:
                        kt = KD.load([kv_row + start, 0])
                        vt = VD.load([kv_row + start, 0])
                    else:
                        offs_k = tl.minimum(start + offs_n, T - 1)
                        kt = tl.load(k_base + offs_k[:, None] * skt + offs_d[None, :])
                        vt = tl.load(v_base + offs_k[:, None] * svt + offs_d[None, :])
                    s = tl.dot(q, tl.trans(kt))
                    if kb == pid_m:
                        s = tl.where(start + offs_n[None, :] <= offs_m[:, None], s, float("-inf"))
                    acc, l_i, m_i = _softmax_update(s, vt, acc, l_i, m_i, qk_scale, False)
        if HAS_COLS:
            if COL_STAGES == 0:  # the first column loop (kept to time against): every step masked, not pipelined
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
            else:
                # Columns of the query block's own key block lie on block diagonal 0, always kept: only those of
                # earlier key blocks are gathered, and they precede every row of the block (no causal mask). The
                # previous block's count is how many there are. Each step gathers BN columns' K and V rows (loads
                # clamped into the sequence, so unmasked, and software-pipelined over COL_STAGES), and masks logits
                # only where a step holds a column a kept block diagonal covers or runs past the count (the last
                # one). Every row already has a finite maximum from its diagonal tile: no guard. With COL_COPY the
                # head's column rows were copied in order before the launch (KCD / VCD: [B * H * NV, D]): a step
                # reads BN consecutive rows with TMA (rows past the count are the next head's or zeros: masked).
                n_c = tl.load(CCNT + row - 1, mask=pid_m > 0, other=0)
                for c in tl.range(0, n_c, BN, num_stages=COL_STAGES):
                    offs_c = c + offs_n
                    cols = tl.load(COLS + pid_bh * NV + offs_c, mask=offs_c < NV, other=0)
                    idx = tl.minimum(cols, T - 1)
                    if COL_COPY:
                        kt = KCD.load([pid_bh * NV + c, 0])
                        vt = VCD.load([pid_bh * NV + c, 0])
                    else:
                        kt = tl.load(k_base + idx[:, None] * skt + offs_d[None, :])
                        vt = tl.load(v_base + idx[:, None] * svt + offs_d[None, :])
                    cov = tl.load(BDIAG + pid_bh * NQB + pid_m - idx // BS, mask=offs_c < n_c, other=1)
                    ok = (offs_c < n_c) & (cov == 0)
                    s = tl.dot(q, tl.trans(kt))
                    if COL_MASK:  # every step masked: no count across the warps before the softmax
                        s = tl.where(ok[None, :], s, float("-inf"))
                    elif tl.sum(ok.to(tl.int32), 0) < BN:
                        s = tl.where(ok[None, :], s, float("-inf"))
                    acc, l_i, m_i = _softmax_update(s, vt, acc, l_i, m_i, qk_scale, False)
        l_safe = tl.where(l_i == 0.0, 1.0, l_i)
        out = acc / l_safe[:, None]
        tl.store(O + b * sob + h * soh + offs_m[:, None] * sot + offs_d[None, :], out.to(O.dtype.element_ty),
                 mask=offs_m[:, None] < T)


# Launch settings for 128-token blocks and head dim 128 (H200, bf16; benchmarks/bench_tile_kernel.py,
# results/tile_kernel-20261205T194053Z.json): whole 128-key tiles per step, TMA loads, three stages (1.80 vs 2.10 ms
# for two at 32K / 0.9; 14.4 vs 16.3 ms at 128K / 0.95). Three stages of K and V plus Q take 224 KB of shared memory
# at d = 128: on smaller GPUs or larger heads the default steps down to fewer stages
# COL_STAGES: pipeline stages of the column loop (patterns with columns only; None: num_stages, 0: the first,
# unpipelined loop). Its buffers (BN gathered columns of K and V a stage) are never more than the tile loop's.
# COL_MASK: 1 masks every column step's logits; 0 counts a step's usable columns first and masks only where some are
# not (the last step, or a column a kept block diagonal covers).
# COL_COPY: 1 copies each head's column slots' key and value rows into contiguous buffers before the launch (two
# [B, H, NV, D] tensors: GROUP times K and V where a pattern has T slots, as the line methods' patterns built without
# a host sync do), and the pipelined column loop reads them with TMA like the tile loop (where TMA is used); 0 gathers
# the rows in the loop with pointer loads.
DEFAULT_CONFIG = {"BM": 128, "BN": 128, "num_warps": 8, "num_stages": 3, "USE_TMA": True, "COL_STAGES": None,
                  "COL_MASK": 0, "COL_COPY": 0}
BLOCK_SIZES = (16, 32, 64, 128)  # pattern block sizes the kernel takes


def shared_memory(cfg: dict, block_size: int, head_dim: int, itemsize: int) -> int:
    """Bytes of shared memory the kernel's tiles take: the ``BM`` query rows and ``num_stages`` buffers of one key
    block's keys and values (each of the block's ``block_size / BN`` key steps has its own buffers, so ``BN`` does not
    change the total; measured: Triton asks for these bytes plus a few dozen for barriers)."""
    return (cfg["BM"] + 2 * cfg["num_stages"] * block_size) * head_dim * itemsize


def resolve_config(block_size: int, config: dict | None = None, head_dim: int | None = None, itemsize: int = 2,
                   smem_limit: int | None = None) -> dict:
    """:data:`DEFAULT_CONFIG` under ``config``: ``BM`` query rows per program, ``BN`` keys per step (both cut to the
    block size and dividing it), 4 warps for blocks under 128 tokens. With ``smem_limit`` (bytes per block) and
    ``num_stages`` left to the default, the stages step down (to 1) until the tiles fit; a ``num_stages`` the caller
    chose is kept (Triton then reports what does not fit)."""
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
    if smem_limit is not None and "num_stages" not in (config or {}):
        while cfg["num_stages"] > 1 and shared_memory(cfg, block_size, head_dim, itemsize) > smem_limit:
            cfg["num_stages"] -= 1
    return cfg


def _tma_ok(k: torch.Tensor, v: torch.Tensor) -> bool:
    """TMA loads need a Hopper-class GPU (or the interpreter) and 16-byte aligned K/V bases; otherwise pointer
    loads (the same kernel, ``USE_TMA=False``)."""
    if k.data_ptr() % 16 or v.data_ptr() % 16:
        return False
    return INTERPRET or _device(k.device)[0] >= 9


@functools.lru_cache(maxsize=8)
def _device(device: torch.device) -> tuple[int, int | None]:
    """``(compute capability major, shared memory one block may use)`` of ``device``, asked once; under the
    interpreter ``(0, None)`` (no TMA check needed, no shared-memory limit)."""
    if INTERPRET or device.type != "cuda":
        return 0, None
    props = torch.cuda.get_device_properties(device)
    return props.major, getattr(props, "shared_memory_per_block_optin", None) or props.shared_memory_per_block


def tile_attention(q, k, v, pattern: TilePattern, scale: float | None = None, config: dict | None = None):
    """Triton fast path (CUDA): same contract as :func:`tile_attention_reference`. ``config``: launch settings
    (``BM`` query rows per program, ``BN`` keys per step, ``num_warps``, ``num_stages`` of the tile loop,
    ``USE_TMA`` for its K/V loads, where the GPU has TMA and the bases are aligned) over :data:`DEFAULT_CONFIG`."""
    need_triton(q, "tile_attention", "tile_attention_reference")
    b, h, t, d = q.shape
    if d not in (16, 32, 64, 128, 256):
        raise ValueError(f"head dim {d} not supported by the Triton kernel (power of two 16..256)")
    if pattern.block_size not in BLOCK_SIZES:
        raise ValueError(f"block_size {pattern.block_size} not supported by the Triton kernel {BLOCK_SIZES}")
    cfg = resolve_config(pattern.block_size, config, d, q.element_size(), _device(q.device)[1])
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    o = torch.empty_like(q)
    scale = scale if scale is not None else d ** -0.5
    hybrid = pattern.tiled_heads is not None
    diag = pattern.diags is not None
    mode = 3 if hybrid else (2 if diag else (1 if pattern.diag_last else 0))
    tiles = (pattern.diags if diag else pattern.tiles).contiguous()
    kt = tiles.shape[-1]
    # MODE 3 only: the explicit tiles and which heads read them (otherwise unread: any valid pointer fills the slots)
    tiles2 = pattern.tiles.contiguous() if hybrid else tiles
    heads = pattern.tiled_heads.to(torch.int8).contiguous() if hybrid else pattern.tile_cnt
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
    col_stages = (cfg["num_stages"] if cfg["COL_STAGES"] is None else cfg["COL_STAGES"]) if has_cols else 0
    col_copy = bool(cfg["COL_COPY"]) and has_cols and use_tma and col_stages > 0
    if col_copy:  # [B, H, NV, D]: head h's kept columns' rows of its key head, in list order (padding: the last row)
        idx = cols.long().clamp(max=t - 1)
        kvh = (torch.arange(h, device=q.device) // (h // k.shape[1]))[None, :, None]
        bi = torch.arange(b, device=q.device)[:, None, None]
        kcd = TensorDescriptor.from_tensor(k[bi, kvh, idx].view(-1, d), [bn, d])
        vcd = TensorDescriptor.from_tensor(v[bi, kvh, idx].view(-1, d), [bn, d])
    else:
        kcd, vcd = kd, vd  # never read
    grid = (nqb * (bs // cfg["BM"]), b * h)
    _tile_attn_fwd[grid](
        q, k, v, kd, vd, kcd, vcd, o, tiles, pattern.tile_cnt.contiguous(), cols, pattern.col_cnt.contiguous(), bdiag,
        tiles2, heads, tiles2.shape[-1], scale * 1.4426950408889634,
        *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *o.stride()[:3],
        h, h // k.shape[1], t, nqb, kt, cols.shape[-1],
        MODE=mode, HAS_COLS=has_cols, USE_TMA=use_tma, STAGES=cfg["num_stages"], BS=bs, BM=cfg["BM"], BN=bn, D=d,
        COL_STAGES=col_stages, COL_MASK=int(cfg["COL_MASK"]), COL_COPY=int(col_copy),
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )
    return o

