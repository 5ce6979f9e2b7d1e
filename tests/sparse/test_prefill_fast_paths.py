"""Fast estimation and mask-building branches of the sparse prefill methods against plain references."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from leanformer.sparse.kernels import from_tiles, tile_attention_reference
from leanformer.sparse.kernels.flex_block import (
    DEFAULT_KERNEL_OPTIONS,
    build_block_mask,
    flex_block_attention,
    resolve_kernel_options,
)
from leanformer.sparse.kernels.pattern import reverse_tiles
from leanformer.sparse.prefill.block_topk import block_pattern, topk_bias
from leanformer.sparse.prefill.estimate import pool_blocks, pooled_block_scores, vs_scores


def _naive_vs(q, k, w, scale):
    b, hq, t, _ = q.shape
    s = (q.float()[:, :, t - w:] @ k.float().repeat_interleave(hq // k.shape[1], 1).transpose(-1, -2)) * scale
    pos = torch.arange(t - w, t)
    p = s.masked_fill(torch.arange(t)[None, :] > pos[:, None], float("-inf")).softmax(-1)
    slash = torch.zeros(b, hq, t)
    for r in range(w):
        c = torch.arange(int(pos[r]) + 1)
        slash[..., pos[r] - c] += p[..., r, c]
    return p.sum(-2) / w, slash / w


@pytest.mark.parametrize("t, w", [(40, 40), (40, 1), (33, 7), (5, 2)])
def test_vs_scores_diagonal_sums_edge_windows(t, w, helpers):
    q, k, _ = helpers.make_qkv(2, 4, 2, t)
    vert, slash, _ = vs_scores(q, k, w, 0.25)
    nv, ns = _naive_vs(q, k, w, 0.25)
    torch.testing.assert_close(vert, nv)
    torch.testing.assert_close(slash, ns)


def test_vs_scores_key_head_chunks_agree(helpers):
    q, k, _ = helpers.make_qkv(1, 6, 3, 50)
    whole = vs_scores(q, k, 9, 0.25, tail=3)
    chunked = vs_scores(q, k, 9, 0.25, tail=3, max_elems=1)  # one key head at a time
    for a, b in zip(whole, chunked):
        torch.testing.assert_close(a, b)


def test_vs_scores_half_precision_close_to_fp32(helpers):
    q, k, _ = helpers.make_qkv(1, 4, 2, 70, dtype=torch.bfloat16)
    vert, slash, _ = vs_scores(q, k, 16, 0.25)
    nv, ns = _naive_vs(q, k, 16, 0.25)
    assert (vert - nv).abs().max() < 2e-3 and (slash - ns).abs().max() < 2e-3


@pytest.mark.parametrize("t", [64, 77])
def test_pool_blocks_reads_half_precision_with_fp32_sums(t):
    x = torch.randn(2, 3, t, 8).bfloat16()
    n = -(-t // 16)
    pad = F.pad(x.float(), (0, 0, 0, n * 16 - t)).reshape(2, 3, n, 16, 8).sum(-2)
    counts = torch.tensor([16.0] * (n - 1) + [t - (n - 1) * 16.0])
    out = pool_blocks(x, 16)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, pad / counts[:, None])


def test_block_scores_bias_forces_and_drops(helpers):
    q, k, _ = helpers.make_qkv(1, 4, 2, 70)
    n = 9
    plain = pooled_block_scores(q, k, 8, 0.25)
    biased = pooled_block_scores(q, k, 8, 0.25, bias=topk_bias(n, q.device))
    i = torch.arange(n)
    causal = i[None, :] <= i[:, None]
    assert torch.isneginf(plain[..., ~causal]).all() and torch.isfinite(plain[..., causal]).all()
    assert torch.isneginf(biased[..., i, i]).all()
    assert torch.isposinf(biased[..., 1:, 0]).all() and torch.isposinf(biased[..., i[1:], i[1:] - 1]).all()
    free = causal & (i[None, :] != i[:, None]) & (i[None, :] != 0) & (i[None, :] != i[:, None] - 1)
    torch.testing.assert_close(biased[..., free], plain[..., free])


def test_block_pattern_host_k_equals_per_row_k(helpers):
    q, k, _ = helpers.make_qkv(2, 4, 2, 150)
    n = -(-150 // 8)
    scores = pooled_block_scores(q, k, 8, 0.25, bias=topk_bias(n, q.device))
    a = block_pattern(scores, 5, 8, 150)
    b = block_pattern(scores, torch.full((2, 4, n), 5), 8, 150)
    assert torch.equal(a.tile_cnt, b.tile_cnt)
    assert torch.equal(a.block_mask(), b.block_mask())
    ar = torch.arange(n)
    # the diagonal is the last valid tile of every row
    assert torch.equal(torch.gather(a.tiles, -1, (a.tile_cnt.long() - 1)[..., None])[..., 0], ar.int().expand(2, 4, n))


def test_kernel_options_defaults_and_cuts():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_kernel_options(128, cpu) is None
    assert resolve_kernel_options(128, cuda) == DEFAULT_KERNEL_OPTIONS
    assert resolve_kernel_options(32, cuda)["BLOCK_M"] == 32 and resolve_kernel_options(32, cuda)["BLOCK_N"] == 32
    assert resolve_kernel_options(128, cuda, {"BLOCK_N": 128, "num_stages": 2})["BLOCK_N"] == 128
    assert resolve_kernel_options(128, cpu, {"num_warps": 4}) == {"num_warps": 4}


def test_flex_full_blocks_equal_mask_mod_only_and_reference(helpers):
    """Compiled FlexAttention on CPU: the full-block mask (diagonal partial) and the all-partial mask give the
    reference output, also when the diagonal is not the last listed tile."""
    pytest.importorskip("torch.nn.attention.flex_attention")
    t, bs = 203, 32
    n = -(-t // bs)
    q, k, v = helpers.make_qkv(1, 4, 2, t)
    blk = torch.rand(1, 4, n, n, generator=torch.Generator().manual_seed(0)) < 0.5
    pat = from_tiles(blk, bs, t)
    ordered = pat
    assert ordered.diag_last
    pat = reverse_tiles(ordered)  # the diagonal first
    assert not pat.diag_last and torch.equal(pat.block_mask(), ordered.block_mask())
    ref = tile_attention_reference(q, k, v, pat)
    try:
        full = flex_block_attention(q, k, v, pat)
    except Exception as e:  # no C++ compiler for Inductor's CPU template
        pytest.skip(f"compiled FlexAttention unavailable on CPU: {type(e).__name__}")
    partial = flex_block_attention(q, k, v, pat, mask_mod_only=True)
    torch.testing.assert_close(full, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(partial, ref, atol=1e-5, rtol=1e-5)
    # diagonal last (the shortcut: its tile list is the full-block list as is): the same masks, the same output
    fast, slow = build_block_mask(ordered), build_block_mask(dataclasses.replace(ordered, diag_last=False))
    assert torch.equal(fast.to_dense(), slow.to_dense())
    torch.testing.assert_close(flex_block_attention(q, k, v, ordered), ref, atol=1e-5, rtol=1e-5)


def test_tile_kernel_config_defaults_and_errors():
    from leanformer.errors import UserError
    from leanformer.sparse.kernels.tile_attention import DEFAULT_CONFIG, resolve_config

    assert resolve_config(128) == DEFAULT_CONFIG
    assert resolve_config(64)["num_warps"] == 4 and resolve_config(32, {"BN": 128})["BN"] == 32
    assert resolve_config(128, {"BN": 128, "USE_TMA": True}) == {**DEFAULT_CONFIG, "BN": 128, "USE_TMA": True}
    with pytest.raises(UserError, match=r"BLOCK_M.*allowed"):
        resolve_config(128, {"BLOCK_M": 64})
    with pytest.raises(UserError, match="BN=48 must divide block_size 128"):
        resolve_config(128, {"BN": 48})


def test_tile_kernel_defaults_step_down_to_fit_shared_memory():
    from leanformer.sparse.kernels.tile_attention import DEFAULT_CONFIG, resolve_config, shared_memory

    hopper, ampere = 232448, 166912  # opt-in shared memory per block: H100 / H200, A100
    assert resolve_config(128, None, 128, 2, hopper) == DEFAULT_CONFIG  # 224 KB fits
    # Triton's own count on an H100 for BN=64, 4 stages was 294976 bytes: these 288 KB and 64 bytes of barriers
    assert shared_memory({**DEFAULT_CONFIG, "BN": 64, "num_stages": 4}, 128, 128, 2) == 294976 - 64
    assert resolve_config(128, None, 128, 2, ampere)["num_stages"] == 2  # 160 KB
    for d, itemsize in [(256, 2), (128, 4)]:  # 192 KB at one stage
        cfg = resolve_config(128, None, d, itemsize, hopper)
        assert cfg["num_stages"] == 1 and shared_memory(cfg, 128, d, itemsize) <= hopper
    assert resolve_config(64, None, 128, 2, ampere)["num_stages"] == 3  # 64-token blocks: 112 KB
    # a number of stages the caller chose stays, even when it does not fit (Triton then says so)
    assert resolve_config(128, {"num_stages": 3}, 256, 2, hopper)["num_stages"] == 3


def _launches_possible(monkeypatch, launched: list, fail: bool):
    """Every bookkeeping dispatcher's launch made available on CPU tensors: each launch records its name, then
    raises (``fail``) or returns its reference's result."""
    from leanformer.sparse.kernels import budget, divergence, line_pattern, pattern

    monkeypatch.setattr(line_pattern, "_gpu", lambda x: True)
    monkeypatch.setattr(budget, "on_gpu", lambda x: True)
    monkeypatch.setattr(divergence, "on_gpu", lambda x: True)

    def fake(name, ref):
        def run(*args, **kwargs):
            launched.append(name)
            if fail:
                raise AssertionError(f"{name} launched")
            return ref(*args, **kwargs)
        return run

    def column_cost(bdiag, cols, block_size, seq_len, weight=None, total=False):
        c = (pattern.position_costs(bdiag, block_size, seq_len) if cols is None
             else pattern.column_cost(bdiag, cols, block_size, seq_len))
        c = c if weight is None else c * weight
        return c.sum(-1) if total else c

    monkeypatch.setattr(line_pattern, "column_cost_triton", fake("column_cost", column_cost))
    monkeypatch.setattr(line_pattern, "from_lines_triton", fake("from_lines", pattern.from_lines))
    monkeypatch.setattr(budget, "water_fill_triton", fake("water_fill", budget.water_fill_reference))
    monkeypatch.setattr(divergence, "block_distance_triton", fake("block_distance",
                                                                  divergence.block_distance_reference))


@pytest.mark.parametrize("method", ["vertical_slash", "flexprefill", "streaming"])
def test_reference_impl_keeps_every_step_in_pytorch(method, monkeypatch, helpers):
    """A line method run with ``impl="reference"`` keeps its bookkeeping (the line patterns, FlexPrefill's budget
    split and query-aware test) in PyTorch even where a launch could take it, as it does its estimation and
    attention: each dispatcher follows the method's ``impl``."""
    from leanformer import sparse

    launched = []
    _launches_possible(monkeypatch, launched, fail=True)
    q, k, v = helpers.make_qkv(1, 4, 2, 300)
    extra = {"block_size": 16, "local": 32, "impl": "reference", **({} if method == "streaming" else {"window": 32})}
    for s in (None, 0.8):  # the method's own counts (or none), then a requested sparsity
        sparse.prefill_attention(q, k, v, method, s, **extra)
    assert launched == []


def test_bookkeeping_dispatchers_launch_unless_the_impl_is_reference(monkeypatch):
    from leanformer.sparse.kernels import budget, divergence, line_pattern

    launched = []
    _launches_possible(monkeypatch, launched, fail=False)
    g = torch.Generator().manual_seed(0)
    bdiag = torch.rand(1, 2, 8, generator=g) < 0.5
    colmask = torch.rand(1, 2, 120, generator=g) < 0.2
    need = torch.rand(1, 2, generator=g, dtype=torch.float64) * 100
    scores, probs = torch.randn(1, 2, 8, generator=g), torch.rand(1, 2, 120, generator=g)
    for impl in ("reference", "triton", "auto"):
        launched.clear()
        line_pattern.position_costs(bdiag, 16, 120, impl)
        line_pattern.columns_cost(bdiag, colmask, 16, 120, impl)
        line_pattern.from_lines(bdiag, colmask, 16, 120, impl=impl)
        budget.water_fill(need, torch.tensor([150.0], dtype=torch.float64), 100.0, impl)
        divergence.block_distance(scores, probs, 16, impl)
        want = [] if impl == "reference" else ["column_cost", "column_cost", "from_lines", "water_fill",
                                                 "block_distance"]
        assert launched == want, impl
