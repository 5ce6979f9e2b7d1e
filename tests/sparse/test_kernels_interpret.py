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
            for cfg in (None, {"BN": 128, "USE_TMA": False}, {"BM": 64, "BN": 32, "num_stages": 3}, {"BM": 32}):
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
