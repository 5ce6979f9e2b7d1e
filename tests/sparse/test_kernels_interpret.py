"""The Triton kernels' logic, run on CPU through the Triton interpreter (``TRITON_INTERPRET=1``) in a subprocess.

The GPU tests (``-m gpu``) check the compiled kernels' precision; these check indexing, masking and the online
softmax on odd lengths and GQA without a GPU."""

from __future__ import annotations

import json
import textwrap

import pytest

pytest.importorskip("triton")

SCRIPT = textwrap.dedent("""
    import sys
    import torch
    from leanformer.sparse.kernels import from_diagonals, from_tiles, tile_attention, tile_attention_reference
    from leanformer.sparse.kernels.decode import gather_decode_reference, gather_decode_triton
    from leanformer.sparse.kernels.pattern import reverse_tiles
    g = torch.Generator().manual_seed(42)
    def gap(a, b):  # largest |a - b|; a NaN on one side only counts as infinite (max() would drop a NaN)
        return (a - b).abs().masked_fill(a.isnan() & b.isnan(), 0).nan_to_num(nan=float("inf")).max().item()
    worst = 0.0
    # the kernel's three modes (block diagonals with or without columns; tiles with the diagonal last or first),
    # each with the default launch settings (TMA loads), pointer loads, and programs of fewer rows than a block
    for t, bs, d, hq, hk in [(77, 16, 16, 4, 2), (45, 32, 16, 2, 1), (300, 128, 16, 2, 2)]:
        q, k, v = (torch.randn(1, h, t, d, generator=g) for h in (hq, hk, hk))
        n = -(-t // bs)
        tiles = from_tiles(torch.rand(1, hq, n, n, generator=g) < 0.4, bs, t)
        for pat in (from_diagonals(torch.rand(1, hq, n, generator=g) < 0.4,
                                   torch.rand(1, hq, t, generator=g) < 0.2, bs, t),
                    from_diagonals(torch.rand(1, hq, n, generator=g) < 0.4,
                                   torch.zeros(1, hq, t, dtype=torch.bool), bs, t),
                    tiles, reverse_tiles(tiles)):
            ref = tile_attention_reference(q, k, v, pat)
            for cfg in (None, {"BN": 128, "USE_TMA": False}, {"BM": 64, "BN": 32, "num_stages": 3}, {"BM": 32},
                        {"COL_COPY": 1}, {"COL_COPY": 1, "BN": 16, "COL_MASK": 1}):
                out = tile_attention(q, k, v, pat, config=cfg)
                worst = max(worst, gap(out, ref))
    # keys whose base is not 16-byte aligned (a contiguous view 3 elements into its storage): no TMA, same output
    k_off = torch.randn(1, 2, 300 * 16 + 3, generator=g)[..., 3:].view(1, 2, 300, 16)
    assert not sys.modules["leanformer.sparse.kernels.tile_attention"]._tma_ok(k_off, v)
    ref = tile_attention_reference(q, k_off, v, tiles)
    worst = max(worst, gap(tile_attention(q, k_off, v, tiles), ref))
    q = torch.randn(2, 8, 1, 16, generator=g)
    k, v = torch.randn(2, 2, 101, 16, generator=g), torch.randn(2, 2, 101, 16, generator=g)
    for hs in (2, 8):
        idx = torch.sort(torch.rand(2, hs, 101, generator=g).topk(70, -1).indices, -1).values
        valid = torch.rand(2, hs, 70, generator=g) < 0.7
        valid[..., 0] = True
        for vv in (None, valid):
            out = gather_decode_triton(q, k, v, idx, vv)
            worst = max(worst, gap(out, gather_decode_reference(q, k, v, idx, vv)))
    # the split-K read's launch constants are read at the call (a benchmark sets them): a smaller tile and one
    # program per SM change the split plan, not the output
    kd = sys.modules["leanformer.sparse.kernels.decode"]
    kd.BLOCK_N, kd.PROGRAMS_PER_SM, kd.NUM_WARPS = 16, 1, 2
    out = gather_decode_triton(q, k, v, idx, valid)
    worst = max(worst, gap(out, gather_decode_reference(q, k, v, idx, valid)))
    print(worst)
""")


def test_triton_kernels_match_references_in_interpreter(triton_interpret):
    assert float(triton_interpret(SCRIPT)) < 1e-5


QUEST_SCRIPT = textwrap.dedent("""
    import json
    import torch
    from leanformer import sparse
    from leanformer.sparse.kernels.decode import gather_decode_pages_reference, gather_decode_pages_triton
    from leanformer.sparse.kernels.quest_scores import page_scores, page_scores_triton
    g = torch.Generator().manual_seed(42)
    def gap(a, b):  # largest |a - b|; a NaN on one side only counts as infinite (max() would drop a NaN)
        return (a - b).abs().masked_fill(a.isnan() & b.isnan(), 0).nan_to_num(nan=float("inf")).max().item()
    worst = {"scores": 0.0, "pages": 0.0, "quest": 0.0}
    # page scores: GQA groups 1 and 4, shared and per-head, 150 pages in 3 blocks of 64, views over the metadata
    for hq, hk in [(2, 2), (8, 2)]:
        q = torch.randn(2, hq, 1, 16, generator=g)
        a, c = torch.randn(2, hk, 160, 16, generator=g), torch.randn(2, hk, 160, 16, generator=g)
        kmin, kmax = torch.minimum(a, c)[:, :, :150], torch.maximum(a, c)[:, :, :150]
        for share in (True, False):
            out = page_scores_triton(q, kmin, kmax, share)
            ref = page_scores(q, kmin, kmax, share)
            assert out.shape == ref.shape and out.dtype == torch.float32, (out.shape, ref.shape)
            worst["scores"] = max(worst["scores"], gap(out, ref))
    # page-granular decode: L = 101 (pages of 16: the last holds 5), several key blocks and splits
    for hq, hk in [(2, 2), (8, 2)]:
        q = torch.randn(2, hq, 1, 16, generator=g)
        k, v = torch.randn(2, hk, 101, 16, generator=g), torch.randn(2, hk, 101, 16, generator=g)
        for hs in (hk, hq):
            for ps, n_sel in [(16, 4), (4, 11), (8, 12)]:
                n_pages = -(-101 // ps)
                pages = torch.rand(2, hs, n_pages - 1, generator=g).topk(n_sel, -1).indices
                for last in (n_pages - 1, None):
                    out = gather_decode_pages_triton(q, k, v, pages, ps, last_page=last)
                    ref = gather_decode_pages_reference(q, k, v, pages, ps, last_page=last)
                    worst["pages"] = max(worst["pages"], gap(out, ref))
    # Quest end to end: the triton path against the reference path (same pages, same info)
    q = torch.randn(2, 8, 61, 16, generator=g)
    k, v = torch.randn(2, 2, 61, 16, generator=g), torch.randn(2, 2, 61, 16, generator=g)
    for share in (True, False):
        for t, s in [(61, 0.75), (60, None), (61, 0.0)]:
            res = {}
            for impl in ("triton", "reference"):
                m = sparse.build_decode("quest", page_size=4, token_budget=16, share_gqa=share, impl=impl)
                m.observe_prefill(0, q[:, :, :t - 1], k[:, :, :t - 1], v[:, :, :t - 1])
                res[impl] = m.attend(0, q[:, :, t - 1:t], k[:, :, :t], v[:, :, :t], sparsity=s)
            (out, info), (ref, info_ref) = res["triton"], res["reference"]
            assert info["impl"] == "triton"
            for key in ("keys_read", "keys_total", "sparsity", "kept_pairs", "estimation_pairs", "page_size"):
                assert float(info[key]) == float(info_ref[key]), (key, info[key], info_ref[key])
            worst["quest"] = max(worst["quest"], gap(out, ref))
    print(json.dumps(worst))
""")


def test_quest_kernels_match_references_in_interpreter(triton_interpret):
    worst = json.loads(triton_interpret(QUEST_SCRIPT))  # largest error of each kernel and of Quest's triton path
    print(worst)
    assert all(err < 1e-5 for err in worst.values()), worst


PREFILL_SCRIPT = textwrap.dedent("""
    import json
    import torch
    from leanformer import sparse
    from leanformer.nn.attention import attention
    from leanformer.sparse.kernels import tile_attention, tile_attention_reference
    from leanformer.sparse.kernels.block_select import block_tiles_rows, block_tiles_rows_triton
    from leanformer.sparse.kernels.coverage import coverage_rows, coverage_rows_triton
    from leanformer.sparse.kernels.pattern import TilePattern, from_lines, from_tiles
    from leanformer.sparse.kernels.vs_estimate import vs_scores_triton
    from leanformer.sparse.prefill.estimate import vs_scores
    g = torch.Generator().manual_seed(42)
    def gap(a, b):  # largest |a - b|; a NaN on one side only counts as infinite (max() would drop a NaN)
        return (a - b).abs().masked_fill(a.isnan() & b.isnan(), 0).nan_to_num(nan=float("inf")).max().item()
    worst = {"estimate": 0.0, "columns": 0.0, "hybrid": 0.0, "methods": 0.0}
    same = {"coverage": True, "row_tiles": True, "patterns": True}
    # estimation: odd lengths, GQA, windows longer than the prompt, a tail, several key shares, BM < BN; the tile
    # as window rows x keys and transposed
    for b, hq, hk, t, w, tail, cfg in [(1, 2, 1, 77, 16, 5, {"BM": 16, "BN": 16, "TRANSPOSE": 0}),
                                       (2, 4, 2, 130, 40, 0, {"BM": 16, "BN": 32, "TRANSPOSE": 0}),
                                       (1, 2, 2, 33, 64, 7, {"BM": 16, "BN": 16, "TRANSPOSE": 0}),
                                       (1, 2, 1, 77, 16, 5, {"BM": 16, "BN": 16, "TRANSPOSE": 1}),
                                       (2, 4, 2, 130, 40, 9, {"BM": 16, "BN": 32, "TRANSPOSE": 1}),
                                       (1, 2, 2, 33, 64, 7, {"BM": 16, "BN": 16, "TRANSPOSE": 1})]:
        q, k = torch.randn(b, hq, t, 16, generator=g), torch.randn(b, hk, t, 16, generator=g)
        for x, y in zip(vs_scores_triton(q, k, w, 0.3, tail=tail, config=cfg), vs_scores(q, k, w, 0.3, tail=tail)):
            assert (x is None) == (y is None)
            if x is not None:
                worst["estimate"] = max(worst["estimate"], gap(x, y))
    # per-row coverage and per-row tile selection (ties included)
    s = torch.randn(3, 37, 37, generator=g) * 3
    i = torch.arange(37)
    s = s.masked_fill(i[None, :] > i[:, None], float("-inf"))
    for a in (0.3, 0.65, 0.95):
        same["coverage"] &= torch.equal(coverage_rows(s, a), coverage_rows_triton(s, a))
    s[0] = s[0].round()
    k_rows = torch.randint(0, 40, (3, 37), generator=g)
    (tr, cr), (to, co) = block_tiles_rows(s, k_rows), block_tiles_rows_triton(s, k_rows)
    used = torch.arange(37) < cr[..., None]
    same["row_tiles"] &= torch.equal(cr, co) and torch.equal(torch.where(used, tr, -1), torch.where(used, to, -1))
    # the column loop (pipelined, or the first one) on line patterns, and hybrid tile / line patterns
    for t, bs, hq, hk in [(77, 16, 4, 2), (130, 16, 2, 2)]:
        q, k, v = (torch.randn(1, h, t, 16, generator=g) for h in (hq, hk, hk))
        n = -(-t // bs)
        lines = from_lines(torch.rand(1, hq, n, generator=g) < 0.4, torch.rand(1, hq, t, generator=g) < 0.3, bs, t)
        ref = tile_attention_reference(q, k, v, lines)
        for cfg in (None, {"COL_STAGES": 0}, {"BM": 8, "BN": 8}, {"BM": 8, "BN": 8, "COL_MASK": 1}):
            worst["columns"] = max(worst["columns"], gap(tile_attention(q, k, v, lines, config=cfg), ref))
        tiled = from_tiles(torch.rand(1, hq, n, n, generator=g) < 0.4, bs, t)
        on = (torch.arange(hq) % 2 == 0)[None, :, None]
        hybrid = TilePattern(bs, t, torch.where(on, tiled.tile_cnt, lines.tile_cnt), torch.where(on, t, lines.cols),
                             torch.where(on, 0, lines.col_cnt), lines.bdiag & ~on, diags=lines.diags,
                             tiles=tiled.tiles, diag_last=True, tiled_heads=on[..., 0])
        out = tile_attention(q, k, v, hybrid)
        worst["hybrid"] = max(worst["hybrid"], gap(out, tile_attention_reference(q, k, v, hybrid)))
    # the methods' Triton paths (estimation, selection, kernel) against their reference paths
    small = {"vertical_slash": dict(block_size=16, window=24, local=8, sinks=2, vertical_size=5, slash_size=5),
             "flexprefill": dict(block_size=16, window=24, local=8, sinks=2, min_budget=4)}
    q, k, v = (torch.randn(1, h, 77, 16, generator=g) for h in (4, 2, 2))
    for method, extra, s in [("vertical_slash", {}, 0.6), ("vertical_slash", {}, None),
                             ("flexprefill", {"tau": 10.0}, None), ("flexprefill", {"tau": 0.0}, 0.6)]:
        (out, info), (_, rinfo) = (sparse.prefill_attention(q, k, v, method, s, impl=impl, **small[method], **extra)
                                   for impl in ("triton", "reference"))
        mask = info["pattern"].to_mask()
        same["patterns"] &= torch.equal(mask, rinfo["pattern"].to_mask())
        worst["methods"] = max(worst["methods"], gap(out, attention(q, k, v, causal=False, mask=mask, backend="math")))
    print(json.dumps({"worst": worst, "same": same}))
""")


def test_prefill_estimation_selection_and_line_kernels_in_interpreter(triton_interpret):
    res = json.loads(triton_interpret(PREFILL_SCRIPT, timeout=300))
    print(res)
    assert all(res["same"].values()), res
    assert all(err < 1e-5 for err in res["worst"].values()), res


SELECT_SCRIPT = textwrap.dedent("""
    import json
    import torch
    from leanformer import sparse
    from leanformer.sparse.kernels import decode
    from leanformer.sparse.kernels.decode import gather_decode_pages_reference, gather_decode_pages_triton
    from leanformer.sparse.kernels.quest_scores import (counts_for, page_scores, page_scores_triton, quantize_pages,
                                                        select_pages_reference, select_pages_triton)
    g = torch.Generator().manual_seed(42)
    def gap(a, b):
        return (a - b).abs().masked_fill(a.isnan() & b.isnan(), 0).nan_to_num(nan=float("inf")).max().item()
    worst = {"int8_scores": 0.0, "fused_merge": 0.0, "quest_int8": 0.0}
    same = {"select": True, "select_lens": True, "counts_reset": True}
    for hq, hk in [(2, 2), (8, 2)]:
        q = torch.randn(2, hq, 1, 16, generator=g)
        a, c = torch.randn(2, hk, 150, 16, generator=g), torch.randn(2, hk, 150, 16, generator=g)
        kmin, kmax = torch.minimum(a, c), torch.maximum(a, c)
        q8 = quantize_pages(kmin, kmax)
        for share in (True, False):
            ref = page_scores(q, *q8[:2], share, *q8[2:])  # relative: fp32 sums of products in another order
            err = gap(page_scores_triton(q, q8[0], q8[1], share, kmin_scale=q8[2], kmax_scale=q8[3]), ref)
            worst["int8_scores"] = max(worst["int8_scores"], err / ref.abs().max().item())
            # device-side lengths: row 0's first head has 2 complete pages before its current one (fewer than k)
            lens = torch.tensor([[40, 2400], [1, 777]][:2], dtype=torch.int32)[:, :hk]
            for kk in (1, 9, 150):
                for meta in ((kmin, kmax), q8):
                    same["select"] &= torch.equal(select_pages_reference(q, *meta[:2], kk, share, *meta[2:]),
                                                  select_pages_triton(q, *meta[:2], kk, share, *meta[2:]))
                    ref = select_pages_reference(q, *meta[:2], kk, share, *meta[2:], lens=lens, page_size=16)
                    same["select_lens"] &= torch.equal(ref, select_pages_triton(q, *meta[:2], kk, share, *meta[2:],
                                                                                lens=lens, page_size=16))
                    same["select_lens"] &= bool((ref[0, 0, 2:] == -1).all()) if kk > 2 else True
        k, v = torch.randn(2, hk, 301, 16, generator=g), torch.randn(2, hk, 301, 16, generator=g)
        for hs in (hk, hq):
            pages = torch.rand(2, hs, 18, generator=g).topk(12, -1).indices
            out = gather_decode_pages_triton(q, k, v, pages, 16, last_page=18, block_n=16, fused_merge=True)
            worst["fused_merge"] = max(worst["fused_merge"], gap(out, gather_decode_pages_reference(q, k, v, pages, 16,
                                                                                                    last_page=18)))
    same["counts_reset"] = counts_for(q.device, 64).abs().sum().item() == 0
    # Quest end to end with int8 summaries: the fused path reads what the reference path reads
    q = torch.randn(2, 8, 61, 16, generator=g)
    k, v = torch.randn(2, 2, 61, 16, generator=g), torch.randn(2, 2, 61, 16, generator=g)
    for share, fused in ((True, True), (False, True), (True, False)):
        decode.FUSED_MERGE = fused  # the read's splits merged in its last split, or by a merge launch
        res = {}
        for impl in ("triton", "reference"):
            m = sparse.build_decode("quest", page_size=4, token_budget=16, share_gqa=share, metadata="int8", impl=impl)
            m.observe_prefill(0, q[:, :, :60], k[:, :, :60], v[:, :, :60])
            res[impl] = m.attend(0, q[:, :, 60:], k, v, sparsity=0.75)
        assert float(res["triton"][1]["keys_read"]) == float(res["reference"][1]["keys_read"])
        worst["quest_int8"] = max(worst["quest_int8"], gap(res["triton"][0], res["reference"][0]))
    print(json.dumps({"worst": worst, "same": same}))
""")


def test_quest_selection_int8_pages_and_fused_merge_in_interpreter(triton_interpret):
    res = json.loads(triton_interpret(SELECT_SCRIPT, timeout=300))
    print(res)
    assert all(res["same"].values()), res
    assert all(err < 1e-5 for err in res["worst"].values()), res


PAGE_CHOICE_SCRIPT = textwrap.dedent("""
    import torch
    from leanformer.sparse.kernels.quest_scores import (page_scores, row_split, select_from_scores,
                                                        select_pages_triton)
    g = torch.Generator().manual_seed(7)
    q = torch.randn(2, 4, 1, 16, generator=g)
    base = torch.randn(2, 2, 200, 16, generator=g)
    rows = {  # random rows: test_quest_selection_int8_pages_and_fused_merge_in_interpreter
        "ties": base[:, :, torch.randint(0, 12, (200,), generator=g)],  # 12 distinct pages: many equal scores
        "all_equal": base[:, :, :1].expand(-1, -1, 200, -1),
        "extremes": base * torch.tensor([1e30, -1e30, 1e-30, 0.0, 1.0])[torch.arange(200) % 5].view(1, 1, 200, 1),
    }
    lens = torch.tensor([[40, 2400], [1, 777]], dtype=torch.int32)
    same = True
    # 140 pages: a row of 128 and a tail of 12 (held as 16); 130: a tail of 2; 200: one row padded to 256
    assert [row_split(n) for n in (140, 130, 200)] == [(128, 16), (128, 2), (256, 0)]
    for n, names in ((140, rows), (130, ("ties", "extremes")), (200, ("ties", "extremes"))):
        for name in names:
            pages = rows[name][:, :, :n]
            for share in (True, False):
                want = page_scores(q, pages, pages, share)
                # every k from 1 to all pages on the row with a tail; the ends and one between on the others
                for kk in ((1, 2, 37, n - 1, n) if n == 140 else (1, 37, n)):
                    # the choice exactly as a stable sort makes it from the scores the launch ranked (the
                    # interpreter's fp32 product may differ in the last bit between equal pages, as BLAS blocks
                    # them), and those scores the reference's
                    top, s = select_pages_triton(q, pages, pages, kk, share, return_scores=True)
                    same &= torch.equal(top, select_from_scores(s, kk))
                    same &= torch.allclose(s, want, rtol=1e-5, atol=1e-6 * float(want.abs().max()))
                    top, s = select_pages_triton(q, pages, pages, kk, share, lens=lens, page_size=16,
                                                 return_scores=True)
                    same &= torch.equal(top, select_from_scores(s, kk, lens=lens, page_size=16))
    print(int(same))
""")


COMPACT_SCRIPT = textwrap.dedent("""
    import torch
    from leanformer.sparse.kernels.quest_scores import row_split, select_from_scores, select_pages_triton
    g = torch.Generator().manual_seed(11)
    q = torch.randn(1, 4, 1, 16, generator=g)
    base = torch.randn(1, 2, 200, 16, generator=g)
    rows = {"random": base[:, :, :140],  # a row of 128 and a tail of 12
            "ties": base[:, :, torch.randint(0, 12, (200,), generator=g)],  # one row padded to 256
            "all_equal": base[:, :, :1].expand(-1, -1, 140, -1)}
    lens = torch.tensor([[40, 2222]], dtype=torch.int32)
    same = True
    for name, pages in rows.items():
        n = pages.shape[2]
        for kk in (1, 37, n - 1):
            # 8 counts, then at most 256 candidates (every row's: the search ends on the copies); 1 count and 16
            # candidates (most rows have more: the search goes on over the row)
            for steps, cap in ((8, 256), (1, 16)):
                top, s = select_pages_triton(q, pages, pages, kk, True, return_scores=True, compact_steps=steps,
                                             compact_cap=cap)
                same &= torch.equal(top, select_from_scores(s, kk))
                top, s = select_pages_triton(q, pages, pages, kk, False, lens=lens, page_size=16,
                                             return_scores=True, compact_steps=steps, compact_cap=cap)
                same &= torch.equal(top, select_from_scores(s, kk, lens=lens, page_size=16))
    print(int(same))
""")


LINE_PATTERN_SCRIPT = textwrap.dedent("""
    import torch
    from leanformer.sparse.kernels.pattern import column_cost, from_lines
    from leanformer.sparse.kernels.line_pattern import column_cost_triton, from_lines_triton
    g = torch.Generator().manual_seed(3)
    ok = True
    for t, bs, width in ((77, 16, None), (130, 16, 5), (2048, 128, None), (2100, 64, 40), (3000, 128, 3000),
                         (16, 16, None)):
        n = -(-t // bs)
        for dens in (0.0, 0.3, 1.0):
            bdiag = torch.rand(2, 3, n, generator=g) < dens
            bdiag[..., 0] = True
            colmask = torch.rand(2, 3, t, generator=g) < dens * 0.2
            pos = torch.arange(t).expand(2, 3, t)
            ref = column_cost(bdiag, pos, bs, t)
            ok &= torch.equal(column_cost_triton(bdiag, None, bs, t), ref)
            ok &= torch.equal(column_cost_triton(bdiag, None, bs, t, weight=colmask, total=True),
                              (ref * colmask).sum(-1))
            cols = torch.sort(torch.where(colmask, pos, t), -1).values[..., :max(1, t // 3)].int()
            want = (column_cost(bdiag, cols.long().clamp(max=t - 1), bs, t) * (cols < t)).sum(-1)
            ok &= torch.equal(column_cost_triton(bdiag, cols, bs, t, total=True), want)
            a, b = from_lines(bdiag, colmask, bs, t, width), from_lines_triton(bdiag, colmask, bs, t, width)
            for f in ("tile_cnt", "cols", "col_cnt", "bdiag", "diags"):
                x, y = getattr(a, f), getattr(b, f)
                if not (x.shape == y.shape and torch.equal(x, y)):
                    ok = False
    print(int(ok))
""")


def test_line_pattern_kernels_match_pattern_functions_in_interpreter(triton_interpret):
    """column_cost_triton (every position, weighted and summed, a padded list summed) and from_lines_triton equal
    pattern.column_cost / from_lines exactly: partial last blocks, 16- to 128-token blocks, no / some / every block
    diagonal kept, column slots fewer than the kept columns, a one-block prompt."""
    assert triton_interpret(LINE_PATTERN_SCRIPT, timeout=300) == "1"


WATER_FILL_SCRIPT = textwrap.dedent("""
    import torch
    from leanformer.sparse.kernels.budget import water_fill_reference, water_fill_triton
    g = torch.Generator().manual_seed(0)
    worst = 0.0
    for b, h, cap in ((5, 8, 120.0), (3, 32, 131072 * 131073 / 2), (2, 28, 1e6), (1, 1, 50.0), (2, 100, 7.5)):
        need = torch.rand(b, h, generator=g, dtype=torch.float64) * cap / 4
        need[0, : h // 3] = cap * 10  # heads that cap
        need[-1, 1:4] = need[-1, 0]  # ties
        need[0, 0] = 0.3  # below the floor of 1
        for total in (torch.rand(b, generator=g, dtype=torch.float64) * cap * h,
                      torch.full((b,), cap * h * 2, dtype=torch.float64)):
            ref, got = water_fill_reference(need, total, cap), water_fill_triton(need, total, cap)
            worst = max(worst, ((got - ref).abs() / ref.abs()).max().item())
    print(worst)
""")


def test_water_fill_kernel_matches_reference_in_interpreter(triton_interpret):
    """FlexPrefill's budget split in one launch (stable ranks instead of a sort) equals the sorted reference: ties,
    needs below the floor, heads that cap, totals past every cap, one head, a row of 100 heads (padded to 128), a
    128K prompt's cap (whole-number fp64, passed as two fp32 parts)."""
    assert float(triton_interpret(WATER_FILL_SCRIPT, timeout=120)) < 1e-13


BLOCK_DISTANCE_SCRIPT = textwrap.dedent("""
    import torch
    from leanformer.sparse.kernels.divergence import block_distance_reference, block_distance_triton
    g = torch.Generator().manual_seed(0)
    worst, same = 0.0, 0.0
    for b, h, t, bs in ((1, 3, 77, 16), (2, 2, 300, 128), (1, 2, 2048, 128), (1, 1, 16, 16), (1, 2, 1000, 8)):
        n = -(-t // bs)
        blk = torch.randn(b, h, n, n, generator=g) * 3
        probs = torch.softmax(torch.randn(b, h, t, generator=g) * 2, -1)
        probs[0, 0, : t // 2] = 0  # blocks without mass
        for s in (blk[:, :, -1], blk[:, :, -1] * 0):  # a strided row; a uniform estimate
            worst = max(worst, (block_distance_reference(s, probs, bs) - block_distance_triton(s, probs, bs))
                        .abs().max().item())
        # the true distribution equal to the estimate, spread over each block's keys: distance 0
        est = torch.softmax(blk[:, :, -1], -1)
        spread = (est[..., None] / bs).expand(b, h, n, bs).reshape(b, h, n * bs)
        same = max(same, block_distance_triton(blk[:, :, -1], spread, bs).max().item())
    print(worst, same)
""")


def test_block_distance_kernel_matches_reference_in_interpreter(triton_interpret):
    """FlexPrefill's query-aware test in one launch equals the reference's softmax, block sums and square-root
    Jensen-Shannon: strided score rows, partial last blocks, blocks without mass, 8- to 128-key blocks; an estimate
    equal to the block sums is at distance ~0 (JS is square-rooted: fp32 rounding of ~1e-8 shows as ~1e-4)."""
    worst, same = map(float, triton_interpret(BLOCK_DISTANCE_SCRIPT, timeout=120).split())
    assert worst < 1e-5 and same < 1e-3


BF16_DOT_SCRIPT = textwrap.dedent("""
    import torch, triton, triton.language as tl
    import leanformer.sparse.kernels.tile_attention  # noqa: F401  (widens the interpreter's bf16 dot operands)
    @triton.jit
    def prod(A, B, C, N: tl.constexpr):
        r = tl.arange(0, N)
        a = tl.load(A + r[:, None] * N + r[None, :])
        b = tl.load(B + r[:, None] * N + r[None, :])
        tl.store(C + r[:, None] * N + r[None, :], tl.dot(a, tl.trans(b)))
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randn(16, 16, generator=g).bfloat16() for _ in range(2))
    c = torch.empty(16, 16)
    prod[(1,)](a, b, c, N=16)
    print(int(torch.allclose(c, a.float() @ b.float().T, atol=1e-5)))
""")


def test_interpreter_multiplies_bf16_values_not_their_bits(triton_interpret):
    """Triton's interpreter keeps bf16 tensors as uint16 bit patterns and its ``tl.dot`` multiplies those; with the
    project's kernels imported, a bf16 product in a kernel equals the fp32 product of the same values."""
    assert triton_interpret(BF16_DOT_SCRIPT, timeout=120) == "1"


def test_quest_page_choice_picks_the_pages_the_reference_picks_in_interpreter(triton_interpret):
    """The page choice's bisection for the k-th largest page score against a stable sort: equal scores (the lower
    page wins, across the boundary of a row and its tail too), all pages equal, scores of +-1e30, 1e-30 and 0 in
    one row, k from 1 to every page, device lengths that leave fewer candidates than k, and rows held whole, padded
    to a power of two, or as a power of two and a short tail."""
    assert triton_interpret(PAGE_CHOICE_SCRIPT, timeout=300) == "1"


def test_quest_compacted_top_k_picks_the_pages_the_reference_picks_in_interpreter(triton_interpret):
    """The page choice with the top-k finished on the candidates left after a few counts
    (``kth_largest_key_compact``): both the path that copies them and the one that goes on over the row, on random
    pages (a row and a tail), many equal scores and all pages equal, with and without device lengths."""
    assert triton_interpret(COMPACT_SCRIPT, timeout=300) == "1"


def bench_script(name: str, argv: list[str], row: str, out) -> str:
    """A script that loads ``benchmarks/NAME.py``, runs its ``main(argv + ["--out", out])`` on the CPU and prints
    ``row`` (an expression of each result row ``r``) for every row, as JSON."""
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / f"{name}.py"
    return textwrap.dedent(f"""
        import importlib.util, json
        spec = importlib.util.spec_from_file_location({name!r}, {str(path)!r})
        bench = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(bench)
        rows = bench.main({["--device", "cpu", *argv, "--out", str(out)]!r})
        print(json.dumps([{row} for r in rows]))
    """)


def test_quest_select_benchmark_runs_each_width_in_interpreter(triton_interpret, tmp_path):
    """benchmarks/bench_quest_select.py's own logic (the GPU timing aside): the default launch and one of two warps,
    the same pages; a row one page past a power of two as a tail and, with ``--padded``, padded (the same pages);
    the compacted top-k (``--compact``) among the variants checked; the tail's parts timed alone (``--tail-parts``,
    rows of a power of two pages only)."""
    script = bench_script("bench_quest_select", ["--lengths", "1024", "1040", "--batch", "1", "--repeat", "1",
                                                 "--budget", "128", "--warps", "0", "2", "--padded", "--compact",
                                                 "3:32", "--tail-parts"],
                          '[r["same_pages"], r["pages"], r["row_split"], r["k"], "select_w2_tail_us" in r, '
                          '"select_padded_us" in r, "select_compact3_32_us" in r, '
                          'sorted(x for x in r if x.startswith("tail_"))]', tmp_path)
    parts = ["tail_bisect_us", "tail_compact3_32_us", "tail_load_us", "tail_write_us"]
    assert json.loads(triton_interpret(script, timeout=300)) == [[True, 64, [64, 0], 7, True, False, True, parts],
                                                                 [True, 65, [64, 2], 7, True, True, True, []]]
    assert list(tmp_path.glob("quest_select-*.json"))


def test_vs_estimate_benchmark_checks_each_setting_in_interpreter(triton_interpret, tmp_path):
    """benchmarks/bench_vs_estimate.py's own logic (the GPU timing aside): each tile setting's sums equal the
    default's before it is timed, at both methods' windows (FlexPrefill's with its tail rows); ``--parts`` times
    the default's launches one by one."""
    script = bench_script("bench_vs_estimate", ["--lengths", "300", "--heads", "2", "--kv-heads", "1", "--dim", "16",
                                                "--configs", "default", "BM=16,BN=32", "--repeat", "1", "--parts"],
                          '[r["method"], r["config"], r.get("rel_err", 0) < 1e-4, '
                          'sorted(x for x in r if x == "us" or x.endswith("_us") and x != "floor_us")]', tmp_path)
    rows = json.loads(triton_interpret(script, timeout=300))
    by_launch = sorted(f"{n}_us" for n in ("stats", "sums", "sums_vertical", "sums_slash"))
    assert rows == [row for m in ("vertical_slash", "flexprefill")
                    for row in ([m, "default", True, ["us"]], [m, "BM=16,BN=32", True, ["us"]],
                                [m, "default, by launch", True, by_launch])]
    assert list(tmp_path.glob("vs_estimate-*.json"))


def test_sparse_decode_benchmark_refuses_a_bad_kernel_setting():
    import os
    import subprocess
    import sys
    from pathlib import Path

    bench = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_sparse_decode.py"
    for text, said in (("BLOCK_Q=32", "BLOCK_N"), ("BLOCK_N=x", "KEY=INT")):
        r = subprocess.run([sys.executable, str(bench), "--kernel-settings", "default", text], capture_output=True,
                           text=True, env={**os.environ, "PYTHONPATH": str(bench.parents[1] / "src")})
        assert r.returncode != 0 and text in r.stderr and said in r.stderr and "Traceback" not in r.stderr


def test_sparse_decode_benchmark_sets_quest_settings_and_puts_them_back():
    """``--kernel-settings`` keys ``QUEST_*`` set Quest's page-choice constants, the others the split-K read's."""
    import importlib.util
    from pathlib import Path

    from leanformer.sparse.kernels import decode as kd
    from leanformer.sparse.kernels import quest_scores as qs

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_sparse_decode.py"
    spec = importlib.util.spec_from_file_location("bench_sparse_decode", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    old = (qs.COMPACT_STEPS, qs.COMPACT_CAP, kd.BLOCK_N)
    with bench.kernel_settings("QUEST_COMPACT_STEPS=6,QUEST_COMPACT_CAP=256,BLOCK_N=32"):
        assert (qs.COMPACT_STEPS, qs.COMPACT_CAP, kd.BLOCK_N) == (6, 256, 32)
        assert not hasattr(kd, "COMPACT_STEPS") and not hasattr(qs, "QUEST_COMPACT_STEPS")
    assert (qs.COMPACT_STEPS, qs.COMPACT_CAP, kd.BLOCK_N) == old


def test_vs_estimate_benchmark_refuses_a_bad_setting():
    import os
    import subprocess
    import sys
    from pathlib import Path

    bench = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_vs_estimate.py"
    r = subprocess.run([sys.executable, str(bench), "--configs", "BQ=3"], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(bench.parents[1] / "src")})
    assert r.returncode != 0 and "BQ=3" in r.stderr and "BM" in r.stderr


def test_sparse_prefill_benchmark_refuses_a_bad_estimate_setting():
    import os
    import subprocess
    import sys
    from pathlib import Path

    bench = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_sparse_prefill.py"
    r = subprocess.run([sys.executable, str(bench), "--estimate-config", "TRANSPOSED=1"], capture_output=True,
                       text=True, env={**os.environ, "PYTHONPATH": str(bench.parents[1] / "src")})
    assert r.returncode != 0 and "TRANSPOSED=1" in r.stderr and "TRANSPOSE" in r.stderr
    assert "Traceback" not in r.stderr
