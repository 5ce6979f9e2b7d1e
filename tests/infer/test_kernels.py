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


ROPE = textwrap.dedent("""
    import torch
    from leanformer.infer.rope_append import rope_append_reference, rope_append_triton
    g = torch.Generator().manual_seed(7)
    worst = 0.0
    b, hq, hk, c, d = 3, 6, 2, 40, 16
    q = torch.randn(b, 1, hq * d, generator=g).view(b, hq, d)
    k, v = torch.randn(b, hk, d, generator=g), torch.randn(b, hk, d, generator=g)
    ang = torch.rand(b, d // 2, generator=g) * 6
    cos, sin = torch.cat([ang.cos()] * 2, -1), torch.cat([ang.sin()] * 2, -1)
    lens0 = torch.tensor([[3, 9], [0, 39], [20, 20]], dtype=torch.int32)
    slot = torch.tensor([[1, 2], [5, 6], [7, 0]], dtype=torch.int32)
    cap = torch.tensor([[10], [40], [4]], dtype=torch.int32)
    starts = torch.tensor([[0, 12], [3, 30], [1, 21]], dtype=torch.int32)
    for kw in ({}, {"slot": slot, "cap": cap}, {"starts": starts}, {"meta": 4}):
        pooled = "starts" in kw
        outs = []
        for fn in (rope_append_reference, rope_append_triton):
            kc = torch.zeros(b, 1 if pooled else hk, c + 30 if pooled else c, d)
            vc = torch.zeros_like(kc)
            lens = lens0.clone() if not pooled else torch.tensor([[3, 2], [0, 1], [5, 4]], dtype=torch.int32)
            extra = dict(kw)
            if "meta" in kw:  # page summaries: lens 3 and 39 extend a page, 0 / 9 / 20 start one (reset)
                g2 = torch.Generator().manual_seed(9)
                kmin, kmax = torch.randn(b, hk, c // 4, d, generator=g2), torch.randn(b, hk, c // 4, d, generator=g2)
                extra["meta"] = (kmin, kmax, 4)
            qo = fn(q, k, v, cos, sin, kc, vc, lens, **extra)
            outs.append((qo, kc, vc, lens) + ((kmin, kmax) if "meta" in kw else ()))
        for x, y in zip(*outs):
            worst = max(worst, (x.float() - y.float()).abs().max().item())
    print(worst)
""")


def test_rope_append_kernel_matches_reference(triton_interpret):
    assert float(triton_interpret(ROPE)) < 1e-5


def test_rope_append_reference_rotates_as_hugging_face():
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    from leanformer.infer.rope_append import rope_append_reference

    q, k, v = torch.randn(2, 4, 8), torch.randn(2, 2, 8), torch.randn(2, 2, 8)
    ang = torch.rand(2, 4)
    cos, sin = torch.cat([ang.cos()] * 2, -1), torch.cat([ang.sin()] * 2, -1)
    kc, vc = torch.zeros(2, 2, 5, 8), torch.zeros(2, 2, 5, 8)
    lens = torch.tensor([[0, 3], [4, 1]], dtype=torch.int32)
    qo = rope_append_reference(q, k, v, cos, sin, kc, vc, lens)
    qr, kr = apply_rotary_pos_emb(q[:, :, None], k[:, :, None], cos[:, None], sin[:, None], unsqueeze_dim=1)
    torch.testing.assert_close(qo, qr[:, :, 0])
    torch.testing.assert_close(kc[1, 0, 4], kr[1, 0, 0])
    torch.testing.assert_close(vc[0, 1, 3], v[0, 1])
    assert lens.tolist() == [[1, 4], [5, 2]]


ROPE_LAYOUT = textwrap.dedent("""
    import torch
    from leanformer.infer.layers import rope_heads, to_heads
    from leanformer.infer.rope_layout import rope_heads_triton
    g = torch.Generator().manual_seed(5)
    worst, shapes = 0.0, True
    b, t, h, d = 2, 45, 3, 16  # 45 rows: a partial block of 32
    # a q/k/v projection's output viewed as heads (a row of 5 heads, 3 of them this tensor's: strided, unit last)
    x = torch.randn(b, t, 5 * d, generator=g)[..., d:4 * d].view(b, t, h, d)
    ang = torch.rand(1, t, d // 2, generator=g) * 6
    cos, sin = torch.cat([ang.cos()] * 2, -1), torch.cat([ang.sin()] * 2, -1)  # one batch row, broadcast
    for ref, got in ((rope_heads(x, cos, sin), rope_heads_triton(x, cos, sin)), (to_heads(x), rope_heads_triton(x)),
                     (rope_heads(x, cos.expand(b, -1, -1).contiguous(), sin.expand(b, -1, -1).contiguous()),
                      rope_heads_triton(x, cos.expand(b, -1, -1).contiguous(), sin.expand(b, -1, -1).contiguous()))):
        shapes &= got.shape == ref.shape and got.is_contiguous()
        worst = max(worst, (got - ref).abs().max().item())
    xb = x.to(torch.bfloat16)  # bf16: rotated in fp32, rounded once (within one bf16 step of the reference)
    got = rope_heads_triton(xb, cos.to(torch.bfloat16), sin.to(torch.bfloat16)).float()
    ref = rope_heads(xb.float(), cos.to(torch.bfloat16).float(), sin.to(torch.bfloat16).float())
    bf16_ok = bool(((got - ref).abs() <= 2 ** -7 * ref.abs() + 1e-6).all())
    print(int(shapes and bf16_ok), worst)
""")


def test_rope_layout_kernel_matches_reference(triton_interpret):
    """The prefill's rotary + [B, T, H, D] -> [B, H, T, D] kernel against layers.rope_heads / to_heads: strided
    head views, a partial row block, cos/sin of one batch row broadcast or one per row, the layout alone, bf16."""
    ok, worst = triton_interpret(ROPE_LAYOUT).split()
    assert ok == "1" and float(worst) < 1e-5


def test_rope_layout_refuses_what_it_cannot_take():
    from leanformer.infer.rope_layout import rope_heads_triton, supported

    assert not supported(torch.randn(1, 4, 2, 16))  # a CPU tensor outside the interpreter
    with pytest.raises(RuntimeError, match="rope_heads"):
        rope_heads_triton(torch.randn(1, 4, 2, 16))
