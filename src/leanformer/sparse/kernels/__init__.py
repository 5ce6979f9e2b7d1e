"""Fast paths beside their plain-PyTorch references (same signatures): tile/column prefill attention (Triton),
block-sparse prefill (FlexAttention), the fused vertical/slash estimation (``vs_estimate``), line patterns'
bookkeeping (``line_pattern``: column costs and line lists, launched on CUDA tensors by its dispatchers), per-row block
selection and coverage (``block_select``, ``coverage``), FlexPrefill's budget split and query-aware test (``budget``,
``divergence``), Quest's page scores and fused page selection (``quest_scores``), and decode attention over gathered
cache positions (``decode``)."""

from __future__ import annotations

from leanformer.sparse.kernels.pattern import TilePattern, column_cost, from_diagonals, from_tiles
from leanformer.sparse.kernels.tile_attention import tile_attention, tile_attention_reference

PREFILL_IMPLS = ("triton", "flex")


def run_pattern(q, k, v, pattern: TilePattern, scale, impl: str, kernel_options: dict | None = None):
    """Dispatch a resolved ``impl`` (``reference``, ``triton`` or ``flex``) for a prefill pattern;
    ``kernel_options`` go to FlexAttention or, for ``triton``, to the tile kernel (``BM``, ``BN``,
    ``num_warps``, ``num_stages``, ``USE_TMA``); the reference takes none."""
    if impl == "reference":
        return tile_attention_reference(q, k, v, pattern, scale)
    if impl == "flex":
        from leanformer.sparse.kernels.flex_block import flex_block_attention

        return flex_block_attention(q, k, v, pattern, scale, kernel_options)
    return tile_attention(q, k, v, pattern, scale, config=kernel_options)


__all__ = ["TilePattern", "column_cost", "from_diagonals", "from_tiles", "run_pattern", "tile_attention",
           "tile_attention_reference", "PREFILL_IMPLS"]
