"""Block-sparse attention through FlexAttention, with the block mask built directly from block indices.

``flex_block_attention(q, k, v, pattern, scale, kernel_options)`` takes a :class:`TilePattern` with explicit
``tiles`` and no columns (what block top-k selects) and runs ``torch.nn.attention.flex_attention`` on a ``BlockMask``
made by ``BlockMask.from_kv_blocks``: off-diagonal tiles are *full* blocks (no mask function evaluated), the diagonal
tile is the only *partial* block (causal ``mask_mod``). No ``T x T`` mask is ever built, and building the mask is a
few launches over ``[B, H, NQB, KT]`` indices (no sort). Its reference is
:func:`leanformer.sparse.kernels.tile_attention.tile_attention_reference`; the Triton kernel there computes the same.
"""

from __future__ import annotations

import inspect
from functools import lru_cache

import torch
import torch.nn.functional as F

from leanformer.sparse.kernels.pattern import TilePattern

# Forward defaults for d = 128 half precision on an H200, the best of a sweep (2026-11-29, block top-k at 32K and 128K,
# sparsity 0.9 / 0.95; results/sparse_prefill-20261129T114738Z.json): 128 x 128 tiles, 8 warps, 3 stages, TMA loads
# (ignored where the GPU or the strides do not allow them), the softmax scale folded into q once, and no guard for
# fully masked rows - none exist here, every query keeps its diagonal block. Against Inductor's own sm90 choice
# (128 x 64, no TMA, no prescale) the kernel is ~10% faster at 128K.
DEFAULT_KERNEL_OPTIONS = {"BLOCK_M": 128, "BLOCK_N": 128, "num_warps": 8, "num_stages": 3, "USE_TMA": True,
                          "PRESCALE_QK": True, "ROWS_GUARANTEED_SAFE": True}


@lru_cache(maxsize=1)
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def _causal(b, h, q_idx, kv_idx):
    return kv_idx <= q_idx


def _pad_last(x: torch.Tensor, size: int) -> torch.Tensor:
    """``x [..., K]`` padded with zeros (or cut) to ``[..., size]``, contiguous int32."""
    return F.pad(x.int(), (0, size - x.shape[-1])).contiguous()


def build_block_mask(pattern: TilePattern, mask_mod_only: bool = False):
    """``BlockMask`` equal to ``pattern`` (explicit tiles, no columns). Sizes are block counts, not tokens.

    Every query block's tiles hold its diagonal (the pattern invariant). The full-block list is the tile list with the
    diagonal entry overwritten by the last valid tile, so its first ``cnt - 1`` entries are exactly the off-diagonal
    tiles; the diagonal is the one partial block. ``mask_mod_only=True`` instead lists every tile as partial (the
    causal ``mask_mod`` evaluated everywhere): slower, the same output; tests compare the two."""
    from torch.nn.attention.flex_attention import BlockMask

    if pattern.tiles is None or pattern.cols.shape[-1]:
        raise ValueError("flex_block_attention takes explicit tiles and no columns (a block top-k pattern)")
    n = pattern.n_blocks
    tiles = pattern.tiles
    cnt = pattern.tile_cnt.int().contiguous()
    b, h = tiles.shape[:2]
    kwargs = {"BLOCK_SIZE": pattern.block_size, "mask_mod": _causal,
              "seq_lengths": (pattern.seq_len, pattern.seq_len)}
    if _takes_compute_q_blocks():
        kwargs["compute_q_blocks"] = False  # forward only: skip the transposed (backward) index
    # BlockMask.to_dense and the eager path size the key-block dim from the index tensors' last dim: pad to NKB
    if mask_mod_only:
        return BlockMask.from_kv_blocks(cnt, _pad_last(tiles, n), **kwargs)
    if pattern.diag_last:  # the first cnt - 1 tiles are the off-diagonal ones already
        full = tiles
    else:
        i = torch.arange(n, device=tiles.device, dtype=tiles.dtype)
        last = torch.gather(tiles, -1, (cnt.long() - 1).clamp(min=0)[..., None])
        full = torch.where(tiles == i[:, None], last, tiles)
    diag_cnt, diag_idx = _diagonal_blocks(b, h, n, tiles.device)
    return BlockMask.from_kv_blocks(diag_cnt, diag_idx, cnt - 1, _pad_last(full, n), **kwargs)


@lru_cache(maxsize=1)
def _takes_compute_q_blocks() -> bool:
    from torch.nn.attention.flex_attention import BlockMask

    return "compute_q_blocks" in inspect.signature(BlockMask.from_kv_blocks).parameters


@lru_cache(maxsize=4)
def _diagonal_blocks(b: int, h: int, n: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(counts, indices)`` listing each query block's own diagonal as its one partial block, padded to ``n``;
    the same for every pattern of a shape (read-only), so built once. The padded indices are ``B x H x n x n`` int32
    (134 MB at 128K tokens and 32 heads): four shapes are kept, what a model's prefill at a few lengths needs."""
    i = torch.arange(n, device=device, dtype=torch.int32)
    return (torch.ones(b, h, n, dtype=torch.int32, device=device),
            _pad_last(i[:, None].expand(b, h, n, 1), n))


def resolve_kernel_options(block_size: int, device: torch.device, kernel_options: dict | None = None) -> dict | None:
    """:data:`DEFAULT_KERNEL_OPTIONS` (CUDA only) under the caller's ``kernel_options``; ``BLOCK_M`` / ``BLOCK_N``
    are cut to ``block_size`` where they exceed it (FlexAttention needs them to divide the sparse block)."""
    opts = dict(DEFAULT_KERNEL_OPTIONS) if device.type == "cuda" else {}
    opts.update(kernel_options or {})
    for key in ("BLOCK_M", "BLOCK_N"):
        if key in opts and opts[key] > block_size:
            opts[key] = block_size
    return opts or None


def flex_block_attention(q, k, v, pattern: TilePattern, scale: float | None = None,
                         kernel_options: dict | None = None, mask_mod_only: bool = False) -> torch.Tensor:
    """``q [B, H_q, T, D]``, ``k, v [B, H_kv, T, D]`` -> ``[B, H_q, T, D]`` (compiled FlexAttention; CUDA in the
    library, CPU works for tests). ``kernel_options``: FlexAttention's (``BLOCK_M``, ``BLOCK_N``, ``num_warps``,
    ``num_stages``, ...), merged over :data:`DEFAULT_KERNEL_OPTIONS`; a new set of options compiles a new kernel."""
    mask = build_block_mask(pattern, mask_mod_only)
    opts = resolve_kernel_options(pattern.block_size, q.device, kernel_options)
    gqa = q.shape[1] != k.shape[1]
    return _compiled_flex()(q, k, v, block_mask=mask, scale=scale, enable_gqa=gqa, kernel_options=opts)
