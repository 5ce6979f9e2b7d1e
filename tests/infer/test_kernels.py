"""The static-cache decode kernel against its reference: contiguous slots, a pool shared by a row's heads, and
pages plus the current page, with lengths that differ per row and head (the Triton interpreter runs it on CPU)."""

from __future__ import annotations

import textwrap

import pytest
import torch

from leanformer.infer.kernels import cache_decode_reference, read_mask

SCRIPT = textwrap.dedent("""
    import torch
    from leanformer.infer.kernels import cache_decode_reference, cache_decode_triton
    g = torch.Generator().manual_seed(42)
    def gap(a, b):
        return (a - b).abs().masked_fill(a.isnan() & b.isnan(), 0).nan_to_num(nan=float("inf")).max().item()
    worst = 0.0
    b, hq, hk, c, d = 2, 6, 2, 203, 16
    q = torch.randn(b, hq, d, generator=g)
    k, v = torch.randn(b, hk, c, d, generator=g), torch.randn(b, hk, c, d, generator=g)
    for lens in ([[203, 1], [64, 130]], [[5, 77], [200, 199]]):
        lens = torch.tensor(lens, dtype=torch.int32)
        for bn in (64, 16):  # one split, and several merged
            out = cache_decode_triton(q, k, v, lens, block_n=bn)
            worst = max(worst, gap(out, cache_decode_reference(q, k, v, lens)))
    # a pool [B, 1, C, D]: head h reads slots starts .. starts + lens - 1
    starts = torch.tensor([[0, 90], [10, 120]], dtype=torch.int32)
    lens = torch.tensor([[90, 100], [37, 83]], dtype=torch.int32)
    kp, vp = k[:, :1].contiguous(), v[:, :1].contiguous()
    ref = cache_decode_reference(q, kp, vp, lens, starts=starts)
    worst = max(worst, gap(cache_decode_triton(q, kp, vp, lens, starts=starts, block_n=16), ref))
    # pages of 16: listed pages (-1 = none) then the current page, per key head or per query head
    lens = torch.tensor([[203, 150], [33, 17]], dtype=torch.int32)
    for hs in (hk, hq):
        pages = torch.tensor([[[0, 3, -1, 7], [2, -1, -1, 1]], [[0, -1, -1, -1], [-1, -1, -1, -1]]], dtype=torch.int32)
        pages = pages.repeat_interleave(hs // hk, 1)
        ref = cache_decode_reference(q, k, v, lens, pages, 16)
        for bn in (64, 16):
            worst = max(worst, gap(cache_decode_triton(q, k, v, lens, pages, 16, block_n=bn), ref))
    print(worst)
""")


def test_cache_decode_kernel_matches_reference(triton_interpret):
    assert float(triton_interpret(SCRIPT)) < 1e-5


def test_read_mask_pages_and_pool():
    k = torch.zeros(1, 1, 40, 4)
    lens = torch.tensor([[35]], dtype=torch.int32)
    m = read_mask(k, lens, torch.tensor([[[0, -1]]], dtype=torch.int32), 8)
    # page 0 and the current page 4 (positions 32..34)
    assert m[0, 0].nonzero().flatten().tolist() == list(range(8)) + [32, 33, 34]
    m = read_mask(k, torch.tensor([[3, 2]], dtype=torch.int32), starts=torch.tensor([[5, 30]], dtype=torch.int32))
    assert m[0, 0].nonzero().flatten().tolist() == [5, 6, 7] and m[0, 1].nonzero().flatten().tolist() == [30, 31]


def test_reference_equals_dense_attention_at_full_length():
    q, k, v = torch.randn(2, 4, 8), torch.randn(2, 2, 11, 8), torch.randn(2, 2, 11, 8)
    lens = torch.full((2, 2), 11, dtype=torch.int32)
    ref = torch.nn.functional.scaled_dot_product_attention(q[:, :, None], k.repeat_interleave(2, 1),
                                                           v.repeat_interleave(2, 1))[:, :, 0]
    torch.testing.assert_close(cache_decode_reference(q, k, v, lens), ref)


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match="heads"):
        cache_decode_reference(torch.randn(1, 3, 8), torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8),
                               torch.ones(1, 2, dtype=torch.int32))
