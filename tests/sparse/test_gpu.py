"""GPU fast paths against their plain-PyTorch references (run with ``pytest -m gpu`` on a CUDA machine).

Rule (flash-attention's): the fast path's error against an fp32 reference is at most twice that of a same-precision
PyTorch computation of the same masked attention (plus a tiny absolute floor for exact-zero baselines)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from leanformer import sparse
from leanformer.nn.attention import repeat_kv
from leanformer.sparse.kernels import from_diagonals, from_tiles, tile_attention, tile_attention_reference
from leanformer.sparse.kernels.decode import gather_decode_attention, gather_decode_reference, gather_decode_triton
from leanformer.sparse.kernels.pattern import reverse_tiles

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def _qkv(b, hq, hk, t, d, dtype, seed=42):
    g = torch.Generator(device="cuda").manual_seed(seed)
    mk = lambda h: torch.randn(b, h, t, d, device="cuda", dtype=dtype, generator=g)  # noqa: E731
    return mk(hq), mk(hk), mk(hk)


def _same_precision(q, k, v, mask):
    g = q.shape[1] // k.shape[1]
    return F.scaled_dot_product_attention(q, repeat_kv(k, g), repeat_kv(v, g), attn_mask=mask)


def _assert_close_rule(fast, q, k, v, mask):
    g = q.shape[1] // k.shape[1]
    s = torch.matmul(q.float(), repeat_kv(k, g).float().transpose(-1, -2)) / q.shape[-1] ** 0.5
    ref = torch.matmul(torch.softmax(s.masked_fill(~mask, float("-inf")), -1), repeat_kv(v, g).float())
    base = _same_precision(q, k, v, mask)
    err_fast = (fast.float() - ref).abs().max().item()
    err_base = (base.float() - ref).abs().max().item()
    assert not torch.isnan(fast).any()
    assert err_fast <= 2 * err_base + 1e-5, (err_fast, err_base)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("t,bs", [(1000, 64), (333, 64), (515, 128)])
def test_tile_kernel_diagonals_and_columns(dtype, t, bs):
    q, k, v = _qkv(2, 8, 2, t, 64, dtype)
    n = -(-t // bs)
    gen = torch.Generator(device="cuda").manual_seed(1)
    bdiag = torch.rand(2, 8, n, device="cuda", generator=gen) < 0.3
    cols = torch.rand(2, 8, t, device="cuda", generator=gen) < 0.1
    pat = from_diagonals(bdiag, cols, bs, t)
    out = tile_attention(q, k, v, pat)
    _assert_close_rule(out, q, k, v, pat.to_mask())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_tile_kernel_explicit_tiles(dtype):
    t, bs = 777, 64
    q, k, v = _qkv(1, 4, 4, t, 128, dtype)
    n = -(-t // bs)
    blk = torch.rand(1, 4, n, n, device="cuda", generator=torch.Generator(device="cuda").manual_seed(2)) < 0.25
    pat = from_tiles(blk, bs, t)
    _assert_close_rule(tile_attention(q, k, v, pat), q, k, v, pat.to_mask())


@pytest.mark.parametrize("config", [{}, {"BN": 64, "num_stages": 3}, {"BM": 64, "num_warps": 4, "USE_TMA": False},
                                    {"BM": 64, "BN": 64, "num_warps": 4}])
@pytest.mark.parametrize("order", ["diag_last", "diag_first", "diagonals"])
def test_tile_kernel_configs_and_tile_orders(config, order):
    """Every launch setting on every kernel mode: explicit tiles with the diagonal last (block top-k) or anywhere,
    and block diagonals with columns; 128-token blocks, an odd length, GQA, bf16."""
    t, bs = 1201, 128
    q, k, v = _qkv(2, 8, 2, t, 128, torch.bfloat16)
    n = -(-t // bs)
    gen = torch.Generator(device="cuda").manual_seed(3)
    if order == "diagonals":
        pat = from_diagonals(torch.rand(2, 8, n, device="cuda", generator=gen) < 0.4,
                             torch.rand(2, 8, t, device="cuda", generator=gen) < 0.05, bs, t)
    else:
        pat = from_tiles(torch.rand(2, 8, n, n, device="cuda", generator=gen) < 0.4, bs, t)
        if order == "diag_first":
            pat = reverse_tiles(pat)
    _assert_close_rule(tile_attention(q, k, v, pat, config=config), q, k, v, pat.to_mask())


def test_tile_kernel_equals_reference_fp32():
    q, k, v = _qkv(1, 4, 2, 300, 64, torch.float32)
    pat = from_diagonals(torch.rand(1, 4, 5, device="cuda") < 0.5, torch.rand(1, 4, 300, device="cuda") < 0.2, 64, 300)
    torch.testing.assert_close(tile_attention(q, k, v, pat), tile_attention_reference(q, k, v, pat),
                               atol=2e-3, rtol=2e-3)  # tf32 dots inside the kernel


@pytest.mark.parametrize("method", ["block_topk", "vertical_slash", "flexprefill", "streaming"])
@pytest.mark.parametrize("s", [0.0, 0.9])
def test_methods_fast_vs_reference(method, s):
    t = 1100
    q, k, v = _qkv(1, 8, 2, t, 128, torch.bfloat16)
    kw = {"vertical_slash": {"window": 128}, "flexprefill": {"window": 128, "min_budget": 64}}.get(method, {})
    out, info = sparse.prefill_attention(q, k, v, method, s, **kw)
    assert info["impl"] in ("triton", "flex")
    mask = info["pattern"].to_mask()
    _assert_close_rule(out, q, k, v, mask)
    if s == 0.0:
        assert float(info["sparsity"]) == 0.0


@pytest.mark.parametrize("s", [0.0, 0.9])
def test_block_topk_flex_vs_reference(s):
    t = 1000
    q, k, v = _qkv(1, 8, 2, t, 128, torch.bfloat16)
    out, info = sparse.prefill_attention(q, k, v, "block_topk", s, impl="flex")
    assert info["impl"] == "flex"
    _assert_close_rule(out, q, k, v, info["pattern"].to_mask())


@pytest.mark.parametrize("fast", [gather_decode_attention, gather_decode_triton])
@pytest.mark.parametrize("hs", ["kv", "q"])
def test_gather_decode_vs_reference(hs, fast):
    b, hq, hk, length, d = 3, 8, 2, 1001, 128
    g = torch.Generator(device="cuda").manual_seed(3)
    q = torch.randn(b, hq, 1, d, device="cuda", dtype=torch.bfloat16, generator=g)
    k = torch.randn(b, hk, length, d, device="cuda", dtype=torch.bfloat16, generator=g)
    v = torch.randn_like(k)
    h = hk if hs == "kv" else hq
    idx = torch.sort(torch.rand(b, h, length, device="cuda", generator=g).topk(77, -1).indices, -1).values
    valid = torch.rand(b, h, 77, device="cuda", generator=g) < 0.8
    valid[..., 0] = True
    out = fast(q, k, v, idx, valid)
    ref = gather_decode_reference(q.float(), k.float(), v.float(), idx, valid)
    base = gather_decode_reference(q, k, v, idx, valid)
    err_fast = (out.float() - ref).abs().max().item()
    err_base = (base.float() - ref).abs().max().item()
    assert err_fast <= 2 * err_base + 1e-5, (err_fast, err_base)


@pytest.mark.parametrize("method", ["quest", "snapkv", "ada_snapkv", "streaming"])
def test_decode_methods_on_gpu_read_fewer_keys(method):
    b, hq, hk, length, d = 2, 8, 2, 4096, 128
    q, k, v = _qkv(b, hq, hk, length, d, torch.bfloat16)
    out, info = sparse.decode_attention(q[:, :, -1:], k, v, method, 0.9375, prompt=(q, k, v))
    assert info["impl"] == "triton"
    assert float(info["sparsity"]) > 0.9
    assert out.shape == (b, hq, 1, d) and not torch.isnan(out).any()


@pytest.mark.parametrize("share", [True, False])
@pytest.mark.parametrize("hq,hk", [(8, 8), (32, 8)])
def test_page_scores_triton_vs_reference(hq, hk, share):
    from leanformer.sparse.decode.quest import page_minmax
    from leanformer.sparse.kernels.quest_scores import page_scores, page_scores_triton

    q, k, _ = _qkv(2, hq, hk, 16 * 1000 + 5, 128, torch.bfloat16)
    kmin, kmax = page_minmax(k, 16, 0, 1000)
    q1 = q[:, :, -1:]
    out = page_scores_triton(q1, kmin[:, :, :999], kmax[:, :, :999], share)
    ref = page_scores(q1.float(), kmin[:, :, :999].float(), kmax[:, :, :999].float(), share)
    base = page_scores(q1, kmin[:, :, :999], kmax[:, :, :999], share)
    assert out.shape == ref.shape and out.dtype == torch.float32
    err_fast, err_base = (out - ref).abs().max().item(), (base - ref).abs().max().item()
    assert err_fast <= 2 * err_base + 1e-5, (err_fast, err_base)


@pytest.mark.parametrize("hs", ["kv", "q"])
def test_gather_decode_pages_vs_reference(hs):
    from leanformer.sparse.kernels.decode import gather_decode_pages_reference, gather_decode_pages_triton

    b, hq, hk, length, d, ps = 3, 8, 2, 1001, 128, 16
    g = torch.Generator(device="cuda").manual_seed(3)
    q = torch.randn(b, hq, 1, d, device="cuda", dtype=torch.bfloat16, generator=g)
    k = torch.randn(b, hk, length, d, device="cuda", dtype=torch.bfloat16, generator=g)
    v = torch.randn_like(k)
    h = hk if hs == "kv" else hq
    last = -(-length // ps) - 1
    pages = torch.rand(b, h, last, device="cuda", generator=g).topk(9, -1).indices
    out = gather_decode_pages_triton(q, k, v, pages, ps, last_page=last)
    ref = gather_decode_pages_reference(q.float(), k.float(), v.float(), pages, ps, last_page=last)
    base = gather_decode_pages_reference(q, k, v, pages, ps, last_page=last)
    err_fast = (out.float() - ref).abs().max().item()
    err_base = (base.float() - ref).abs().max().item()
    assert err_fast <= 2 * err_base + 1e-5, (err_fast, err_base)


@pytest.mark.parametrize("share", [True, False])
def test_quest_triton_step_vs_reference(share, monkeypatch):
    """Quest's fused step against the fp32 reference on the pages it chose, with the reference path's counts."""
    import leanformer.sparse.decode.quest as quest
    from leanformer.sparse.kernels.decode import gather_decode_pages_reference

    b, hq, hk, length, d = 2, 8, 2, 4096 + 7, 128
    q, k, v = _qkv(b, hq, hk, length, d, torch.bfloat16)
    seen = {}
    real = quest.gather_decode_pages_triton
    monkeypatch.setattr(quest, "gather_decode_pages_triton",
                        lambda *a, **kw: seen.update(a=a, kw=kw) or real(*a, **kw))
    outs, infos = {}, {}
    for impl in ("triton", "reference"):
        m = sparse.build_decode("quest", impl=impl, share_gqa=share)
        m.observe_prefill(0, q[:, :, :-1], k[:, :, :-1], v[:, :, :-1])
        outs[impl], infos[impl] = m.attend(0, q[:, :, -1:], k, v, sparsity=0.9375)
    assert infos["triton"]["impl"] == "triton"
    for key in ("keys_read", "keys_total", "sparsity", "estimation_pairs"):
        assert float(infos["triton"][key]) == float(infos["reference"][key]), key
    _, _, _, pages, ps, scale = seen["a"]
    kw = {"last_page": seen["kw"]["last_page"]}
    f32 = [x.float() for x in (q[:, :, -1:], k, v)]
    ref = gather_decode_pages_reference(*f32, pages, ps, scale, **kw)
    base = gather_decode_pages_reference(q[:, :, -1:], k, v, pages, ps, scale, **kw)
    err_fast, err_base = (outs["triton"].float() - ref).abs().max().item(), (base.float() - ref).abs().max().item()
    assert err_fast <= 2 * err_base + 1e-5, (err_fast, err_base)


@pytest.mark.parametrize("n,k", [(1024, 25), (1024, 512), (257, 13), (4096, 100)])
def test_block_select_triton_vs_reference(n, k):
    from leanformer.sparse.kernels.block_select import topk_rows, topk_rows_triton

    g = torch.Generator(device="cuda").manual_seed(0)
    s = torch.randn(4, 32, n, device="cuda", generator=g)
    s[..., 1::7] = s[..., ::7][..., : s[..., 1::7].shape[-1]]  # ties
    s[0, :, n // 2:] = float("-inf")
    assert torch.equal(topk_rows_triton(s, k), topk_rows(s, k))
    assert torch.equal(topk_rows_triton(s.bfloat16(), k), topk_rows(s.bfloat16(), k))
    from leanformer.sparse.kernels.block_select import block_tiles, block_tiles_triton

    m = min(n, 1024)  # square block scores as block top-k makes them: future -inf, sink +inf
    i = torch.arange(m, device="cuda")
    sq = torch.randn(2, 8, m, m, device="cuda", generator=g).masked_fill(i[None, :] >= i[:, None], float("-inf"))
    sq[..., 1:, 0] = float("inf")
    for a, b in zip(block_tiles_triton(sq, k), block_tiles(sq, k)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("impl", ["triton", "flex"])
def test_block_topk_call_never_syncs(impl):
    """Block top-k's call (estimation, selection, kernel, info) queues GPU work without waiting for it, so a model's
    layers run back to back; CUDA's sync debug mode raises on any synchronising call."""
    q, k, v = _qkv(1, 8, 2, 4096, 128, torch.bfloat16)
    sparse.prefill_attention(q, k, v, "block_topk", 0.9, impl=impl)  # compile / autotune outside the check
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out, info = sparse.prefill_attention(q, k, v, "block_topk", 0.9, impl=impl)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert float(info["sparsity"]) > 0.8 and out.shape == q.shape  # 32 blocks: k is coarse


def test_block_topk_auto_picks_by_block_size():
    """``impl="auto"``: the Triton tile kernel for the block sizes it takes (short and long inputs), FlexAttention
    for others (and its output still matches the reference)."""
    for t, bs, want in [(4096, 128, "triton"), (40001, 128, "triton"), (1000, 256, "flex")]:
        q, k, v = _qkv(1, 2, 1, t, 64, torch.bfloat16)
        out, info = sparse.prefill_attention(q, k, v, "block_topk", 0.9, block_size=bs)
        assert info["impl"] == want
        if want == "flex":
            _assert_close_rule(out, q, k, v, info["pattern"].to_mask())


@pytest.mark.parametrize("d", [64, 256])
def test_tile_kernel_defaults_fit_shared_memory(d):
    """Head dims other than 128: the default number of stages steps down to fit the GPU's shared memory (d = 256
    needs one stage on Hopper; too many would fail to launch)."""
    t, bs = 700, 128
    q, k, v = _qkv(1, 4, 2, t, d, torch.bfloat16)
    pat = from_tiles(torch.rand(1, 4, 6, 6, device="cuda") < 0.5, bs, t)
    _assert_close_rule(tile_attention(q, k, v, pat), q, k, v, pat.to_mask())


@pytest.mark.parametrize("w,tail", [(256, 0), (512, 128)])
def test_vs_scores_triton_vs_reference(w, tail):
    """The fused estimation against the fp32 reference: its error at most twice the bf16 reference's (which rounds
    the logits to bf16), on an odd length with GQA."""
    from leanformer.sparse.kernels.vs_estimate import vs_scores_triton
    from leanformer.sparse.prefill.estimate import vs_scores

    q, k, _ = _qkv(1, 8, 2, 3001, 128, torch.bfloat16)
    fast = vs_scores_triton(q, k, w, 128 ** -0.5, tail)
    ref = vs_scores(q.float(), k.float(), w, 128 ** -0.5, tail)
    base = vs_scores(q, k, w, 128 ** -0.5, tail)
    for f, r, b_ in zip(fast, ref, base):
        if r is None:
            assert f is None
            continue
        err_fast, err_base = (f - r).abs().max().item(), (b_ - r).abs().max().item()
        assert err_fast <= 2 * err_base + 1e-6, (err_fast, err_base)


@pytest.mark.parametrize("t,bs", [(32768, 128), (5000, 16)])
def test_line_bookkeeping_kernels_equal_pytorch_on_gpu(t, bs, monkeypatch):
    """On CUDA the line patterns' bookkeeping (column costs, their totals, the line lists, kept pairs) runs in
    kernels/line_pattern.py; with it switched off, the PyTorch functions: the same numbers, bit for bit."""
    from leanformer.sparse.kernels import line_pattern
    from leanformer.sparse.kernels.line_pattern import columns_cost, from_lines, kept_pairs, position_costs

    gen = torch.Generator(device="cuda").manual_seed(5)
    n = -(-t // bs)
    bdiag = torch.rand(2, 8, n, device="cuda", generator=gen) < 0.1
    bdiag[..., 0] = True
    colmask = torch.rand(2, 8, t, device="cuda", generator=gen) < 0.02

    def run():
        pat = from_lines(bdiag, colmask, bs, t, 700)
        return (position_costs(bdiag, bs, t), columns_cost(bdiag, colmask, bs, t), kept_pairs(pat), pat.tile_cnt,
                pat.cols, pat.col_cnt, pat.diags)

    fast = run()
    monkeypatch.setattr(line_pattern, "ENABLED", False)
    for a, b in zip(fast, run()):
        assert a.dtype == b.dtype and torch.equal(a, b)


@pytest.mark.parametrize("col_stages,col_mask,col_copy", [(None, 0, 0), (0, 0, 0), (2, 0, 0), (None, 1, 0),
                                                        (None, 0, 1), (None, 1, 1)])
def test_tile_kernel_column_loops(col_stages, col_mask, col_copy):
    """Line patterns built on the device (fixed-width slots) through the pipelined column loop, the first one, and
    two stages, each step masked or only where needed, the rows gathered in the loop or copied before it; hybrid
    tile/line patterns (FlexPrefill's) in the same launch."""
    from leanformer.sparse.kernels.pattern import TilePattern, from_lines

    t, bs = 2049, 128
    q, k, v = _qkv(2, 8, 2, t, 128, torch.bfloat16)
    n = -(-t // bs)
    gen = torch.Generator(device="cuda").manual_seed(4)
    lines = from_lines(torch.rand(2, 8, n, device="cuda", generator=gen) < 0.2,
                       torch.rand(2, 8, t, device="cuda", generator=gen) < 0.1, bs, t)
    cfg = {"COL_STAGES": col_stages, "COL_MASK": col_mask, "COL_COPY": col_copy}
    _assert_close_rule(tile_attention(q, k, v, lines, config=cfg), q, k, v, lines.to_mask())
    tiled = from_tiles(torch.rand(2, 8, n, n, device="cuda", generator=gen) < 0.3, bs, t)
    on = (torch.arange(8, device="cuda") % 3 == 0).expand(2, 8)[..., None]
    hybrid = TilePattern(bs, t, torch.where(on, tiled.tile_cnt, lines.tile_cnt), torch.where(on, t, lines.cols),
                         torch.where(on, 0, lines.col_cnt), lines.bdiag & ~on, diags=lines.diags, tiles=tiled.tiles,
                         diag_last=True, tiled_heads=on[..., 0])
    _assert_close_rule(tile_attention(q, k, v, hybrid, config=cfg), q, k, v, hybrid.to_mask())


def test_coverage_and_row_tiles_triton_vs_reference():
    from leanformer.sparse.kernels.block_select import block_tiles_rows, block_tiles_rows_triton
    from leanformer.sparse.kernels.coverage import coverage_rows, coverage_rows_triton

    g = torch.Generator(device="cuda").manual_seed(5)
    n = 1024
    i = torch.arange(n, device="cuda")
    s = torch.randn(2, 4, n, n, device="cuda", generator=g).masked_fill(i[None, :] > i[:, None], float("-inf"))
    for alpha in (0.3, 0.65, 0.9):
        fast, ref = coverage_rows_triton(s, alpha), coverage_rows(s, alpha)
        assert (fast - ref).abs().max() <= 1 and (fast != ref).float().mean() < 1e-3  # fp32 sums in other orders
    k_rows = torch.randint(0, 40, (2, 4, n), device="cuda", generator=g)
    (tf, cf), (tr, cr) = block_tiles_rows_triton(s, k_rows), block_tiles_rows(s, k_rows)
    used = torch.arange(n, device="cuda") < cr[..., None]
    assert torch.equal(cf, cr) and torch.equal(torch.where(used, tf, -1), torch.where(used, tr, -1))


@pytest.mark.parametrize("method,params", [("vertical_slash", {}), ("flexprefill", {}),
                                           ("flexprefill", {"tau": 10.0}), ("flexprefill", {"query_aware": False}),
                                           ("streaming", {})])
def test_line_methods_never_sync(method, params):
    """Vertical-slash, FlexPrefill (every head query-aware, some, none) and streaming queue estimation, selection,
    kernel and info without waiting for the GPU; the output matches the reference under the pattern they report."""
    q, k, v = _qkv(1, 8, 2, 4096, 128, torch.bfloat16)
    sparse.prefill_attention(q, k, v, method, 0.9, **params)  # compile outside the check
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out, info = sparse.prefill_attention(q, k, v, method, 0.9, **params)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert info["impl"] == "triton"
    _assert_close_rule(out, q, k, v, info["pattern"].to_mask())
    assert abs(float(info["sparsity"]) - 0.9) < 0.1


@pytest.mark.parametrize("compact", [0, 6])
@pytest.mark.parametrize("metadata", ["cache", "int8"])
@pytest.mark.parametrize("share", [True, False])
def test_quest_fused_selection_equals_topk_of_its_scores(metadata, share, compact):
    """The last program of each key head picks exactly the top pages of the scores the launch wrote (equal scores:
    the lower page), for bf16 and int8 page summaries, with the GQA group sharing its pages or not, with the
    32-step bisection over each row or the top-k finished on the candidates left after six counts."""
    from leanformer.sparse.decode.quest import page_minmax
    from leanformer.sparse.kernels.block_select import topk_rows
    from leanformer.sparse.kernels.quest_scores import page_scores, quantize_pages, select_pages_triton

    g = torch.Generator(device="cuda").manual_seed(7)
    k = torch.randn(2, 8, 16 * 8192, 128, device="cuda", dtype=torch.bfloat16, generator=g)
    q = torch.randn(2, 32, 1, 128, device="cuda", dtype=torch.bfloat16, generator=g)
    meta = page_minmax(k, 16, 0, 8191)
    scaled = ()
    if metadata == "int8":
        *meta, smin, smax = quantize_pages(*meta)
        scaled = (smin, smax)
    for _ in range(2):  # the counts it leaves behind let the next launch select again
        picked, scores = select_pages_triton(q, *meta, 511, share, *scaled, return_scores=True,
                                             compact_steps=compact)
        assert torch.equal(picked, topk_rows(scores, 511))
    ref = page_scores(q.float(), *(x.float() for x in meta), share, *scaled)
    assert (scores - ref).abs().max() <= 1e-3 * ref.abs().max()


@pytest.mark.parametrize("fused_merge", [False, True])
def test_quest_fused_step_replays_in_a_cuda_graph(fused_merge, monkeypatch):
    """Quest's Triton step leaves its counts at zero, so a CUDA graph of it replays step after step with the eager
    result (int8 pages, a GQA group sharing its pages, splits merged by a merge launch or by the last split)."""
    import leanformer.sparse.kernels.decode as kd

    monkeypatch.setattr(kd, "FUSED_MERGE", fused_merge)
    b, hq, hk, length, d = 1, 32, 8, 65536 + 9, 128
    q, k, v = _qkv(b, hq, hk, length, d, torch.bfloat16)
    m = sparse.build_decode("quest", metadata="int8")
    m.observe_prefill(0, q[:, :, :-1], k[:, :, :-1], v[:, :, :-1])
    q1 = q[:, :, -1:].clone()
    m.attend(0, q1, k, v, sparsity=0.9375)  # page summaries and counts exist before the capture
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        m.attend(0, q1, k, v, sparsity=0.9375)
    torch.cuda.current_stream().wait_stream(s)
    _replays_as_eager(lambda: m.attend(0, q1, k, v, sparsity=0.9375)[0], q1)


def _replays_as_eager(step, q1, check=None):
    """Capture ``step()`` in a CUDA graph, then three times: a new query in ``q1``, a replay, and the same output
    as ``step()`` run eagerly (``check(eager_output)`` too, where given)."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = step()
    for i in range(3):
        q1.copy_(torch.randn_like(q1))
        graph.replay()
        torch.cuda.synchronize()
        want = step()
        assert torch.equal(out, want), i
        if check is not None:
            check(want)


@pytest.mark.parametrize("fused", [False, True])
def test_snapkv_step_replays_in_a_cuda_graph_with_either_merge(fused, monkeypatch):
    """SnapKV's step over kept positions, its splits merged by a second launch or by the last split of each head
    (which resets its count): a CUDA graph of it replays with the eager result, and both merges agree."""
    from leanformer.sparse.kernels import decode as kd

    b, hq, hk, length, d = 2, 32, 8, 65536, 128
    q, k, v = _qkv(b, hq, hk, length, d, torch.bfloat16)
    m = sparse.build_decode("snapkv")
    m.observe_prefill(0, q[:, :, -64:], k, v)
    q1 = q[:, :, -1:].clone()
    monkeypatch.setattr(kd, "FUSED_MERGE", fused)
    m.attend(0, q1, k, v, sparsity=0.9375)  # kept sets and counts exist before the capture

    def other_merge_agrees(want):
        monkeypatch.setattr(kd, "FUSED_MERGE", not fused)
        other, _ = m.attend(0, q1, k, v, sparsity=0.9375)
        monkeypatch.setattr(kd, "FUSED_MERGE", fused)
        assert (other.float() - want.float()).abs().max().item() < 2e-2

    _replays_as_eager(lambda: m.attend(0, q1, k, v, sparsity=0.9375)[0], q1, other_merge_agrees)


@pytest.mark.parametrize("hs", ["kv", "q"])
def test_gather_decode_pages_fused_merge_vs_reference(hs):
    from leanformer.sparse.kernels.decode import gather_decode_pages_reference, gather_decode_pages_triton

    b, hq, hk, length, d, ps = 1, 32, 8, 131072, 128, 16
    g = torch.Generator(device="cuda").manual_seed(6)
    q = torch.randn(b, hq, 1, d, device="cuda", dtype=torch.bfloat16, generator=g)
    k = torch.randn(b, hk, length, d, device="cuda", dtype=torch.bfloat16, generator=g)
    v = torch.randn_like(k)
    h = hk if hs == "kv" else hq
    last = length // ps - 1
    pages = torch.rand(b, h, last, device="cuda", generator=g).topk(511, -1).indices
    out = gather_decode_pages_triton(q, k, v, pages, ps, last_page=last, fused_merge=True)
    ref = gather_decode_pages_reference(q.float(), k.float(), v.float(), pages, ps, last_page=last)
    base = gather_decode_pages_reference(q, k, v, pages, ps, last_page=last)
    err_fast, err_base = (out.float() - ref).abs().max().item(), (base.float() - ref).abs().max().item()
    assert err_fast <= 2 * err_base + 1e-5, (err_fast, err_base)


def test_water_fill_kernel_equals_reference_on_gpu():
    """FlexPrefill's budget split in one launch (fp64, no sort) against the sorted reference, at a 128K prompt's
    cap and with ties, capped heads and a total past every cap."""
    from leanformer.sparse.kernels.budget import water_fill, water_fill_reference

    gen = torch.Generator(device="cuda").manual_seed(3)
    cap = 131072 * 131073 / 2
    for h in (1, 28, 32, 64, 100):
        need = torch.rand(4, h, device="cuda", generator=gen, dtype=torch.float64) * cap / 4
        need[0, : h // 3] = cap * 10
        need[1, 1:] = need[1, 0]
        total = torch.rand(4, device="cuda", generator=gen, dtype=torch.float64) * cap * h
        total[3] = cap * h * 2
        got = water_fill(need, total, cap)
        torch.testing.assert_close(got, water_fill_reference(need, total, cap), rtol=1e-12, atol=1e-3)


def test_block_distance_kernel_equals_reference_on_gpu():
    """FlexPrefill's query-aware test in one launch against the reference at a 32K prompt's 256 blocks and a
    partial last block."""
    from leanformer.sparse.kernels.divergence import block_distance_reference, block_distance_triton

    gen = torch.Generator(device="cuda").manual_seed(4)
    for t in (32768, 32700):
        n = -(-t // 128)
        blk = torch.randn(1, 32, n, n, device="cuda", generator=gen) * 3
        probs = torch.softmax(torch.randn(1, 32, t, device="cuda", generator=gen) * 2, -1)
        torch.testing.assert_close(block_distance_triton(blk[:, :, -1], probs, 128),
                                   block_distance_reference(blk[:, :, -1], probs, 128), rtol=1e-4, atol=1e-5)
