"""Block-sparse attention through FlexAttention, with the block mask built directly from block indices.

``flex_block_attention(q, k, v, pattern, scale)`` takes a :class:`TilePattern` with explicit ``tiles`` and no
columns (what block top-k selects) and runs ``torch.nn.attention.flex_attention`` on a ``BlockMask`` made by
``BlockMask.from_kv_blocks``: off-diagonal tiles are *full* blocks (no mask function evaluated), the diagonal tile is
the only *partial* block (causal ``mask_mod``). No ``T x T`` mask is ever built. Its reference is
:func:`leanformer.sparse.kernels.tile_attention.tile_attention_reference`; the Triton kernel there computes the same.
"""

from __future__ import annotations

import inspect
from functools import lru_cache

import torch

from leanformer.sparse.kernels.pattern import TilePattern


@lru_cache(maxsize=1)
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def _causal(b, h, q_idx, kv_idx):
    return kv_idx <= q_idx


def build_block_mask(pattern: TilePattern):
    """``BlockMask`` equal to ``pattern`` (explicit tiles, no columns). Sizes are block counts, not tokens."""
    from torch.nn.attention.flex_attention import BlockMask

    if pattern.tiles is None or pattern.cols.shape[-1]:
        raise ValueError("flex_block_attention takes explicit tiles and no columns (a block top-k pattern)")
    n = pattern.n_blocks
    tiles = pattern.tiles.long()
    kt = tiles.shape[-1]
    ar = torch.arange(kt, device=tiles.device)
    i = torch.arange(n, device=tiles.device)[:, None]
    valid = ar < pattern.tile_cnt[..., None]
    # full blocks: valid tiles strictly below the diagonal, packed to the front
    full = valid & (tiles != i)
    order = torch.sort((~full).to(torch.int8), dim=-1, stable=True).indices
    # FlexAttention reads the number of key blocks from the index tensors' last dim: pad them to NKB
    full_idx = torch.zeros(*tiles.shape[:3], n, dtype=torch.int32, device=tiles.device)
    full_idx[..., :kt] = torch.gather(tiles, -1, order)
    full_cnt = full.sum(-1).int().contiguous()
    diag_idx = torch.zeros_like(full_idx)
    diag_idx[..., :1] = i
    diag_cnt = torch.ones(*tiles.shape[:2], n, dtype=torch.int32, device=tiles.device)
    kwargs = {"BLOCK_SIZE": pattern.block_size, "mask_mod": _causal,
              "seq_lengths": (pattern.seq_len, pattern.seq_len)}
    if "compute_q_blocks" in inspect.signature(BlockMask.from_kv_blocks).parameters:
        kwargs["compute_q_blocks"] = False  # forward only: skip the transposed (backward) index
    return BlockMask.from_kv_blocks(diag_cnt, diag_idx, full_cnt, full_idx, **kwargs)


def flex_block_attention(q, k, v, pattern: TilePattern, scale: float | None = None) -> torch.Tensor:
    """``q [B, H_q, T, D]``, ``k, v [B, H_kv, T, D]`` -> ``[B, H_q, T, D]``; CUDA only (compiled FlexAttention)."""
    mask = build_block_mask(pattern)
    opts = None
    if pattern.block_size < 128:
        opts = {"BLOCK_M": pattern.block_size, "BLOCK_N": pattern.block_size}
    gqa = q.shape[1] != k.shape[1]
    return _compiled_flex()(q, k, v, block_mask=mask, scale=scale, enable_gqa=gqa, kernel_options=opts)
