"""The engine on a GPU (run with ``pytest -m gpu`` on a CUDA machine): the decode kernel in bf16 against an fp32
reference, captured decode steps against eager ones, compiled elementwise steps against eager ones, the
engine's prefill against the model's own forward, a prefill with no host sync, and the prefill's rotary + layout
kernel."""

from __future__ import annotations

import pytest
import torch

from leanformer.infer import Engine
from leanformer.infer.kernels import cache_decode_reference, cache_decode_triton

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
transformers = pytest.importorskip("transformers")


def _rel(a, b):
    return float((a.float() - b.float()).norm() / b.float().norm())


@pytest.mark.parametrize("b,hq,hk,cap,d", [(1, 28, 4, 20011, 128), (16, 32, 8, 3001, 128), (3, 8, 8, 257, 64)])
def test_cache_decode_kernel_bf16(b, hq, hk, cap, d):
    g = torch.Generator(device="cuda").manual_seed(42)
    q = torch.randn(b, hq, d, device="cuda", dtype=torch.bfloat16, generator=g)
    k, v = (torch.randn(b, hk, cap, d, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(2))
    lens = torch.randint(1, cap + 1, (b, hk), device="cuda", generator=g, dtype=torch.int32)
    ref = cache_decode_reference(q.float(), k.float(), v.float(), lens)
    out = cache_decode_triton(q, k, v, lens)
    assert not out.isnan().any() and _rel(out, ref) < 1e-2
    # pages of 16: a quarter of the complete pages before the current one, per key head
    n = (cap - 1) // 16
    pages = torch.stack([torch.randperm(n, device="cuda", generator=g)[: max(1, n // 4)] for _ in range(b * hk)])
    pages = pages.view(b, hk, -1).int()
    full = torch.full_like(lens, cap)
    ref = cache_decode_reference(q.float(), k.float(), v.float(), full, pages, 16)
    assert _rel(cache_decode_triton(q, k, v, full, pages, 16), ref) < 1e-2


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = transformers.Qwen2Config(vocab_size=512, hidden_size=256, intermediate_size=512, num_hidden_layers=3,
                                   num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=8192)
    return transformers.Qwen2ForCausalLM(cfg).to("cuda").eval()


@pytest.mark.parametrize("decode", [None, "snapkv", "ada_snapkv", "streaming", "quest"])
def test_captured_steps_equal_eager_steps(model, decode):
    prompts = [torch.randint(0, 512, (n,)).tolist() for n in (1500, 900)]
    kw = dict(decode=decode, sparsity=0.9, compile=False)
    graphed = Engine(model, cuda_graph=True, **kw).generate(prompts, 12)
    eager = Engine(model, cuda_graph=False, **kw).generate(prompts, 12)
    assert graphed == eager


def test_engine_prefill_and_compiled_steps_match_the_model(model):
    ids = torch.randint(0, 512, (1, 700), device="cuda")
    with torch.no_grad():
        ref = model(ids, logits_to_keep=1).logits[0, -1]
    for compile in (False, True):
        eng = Engine(model, compile=compile)
        b = eng.batch([700], 1)
        b.prefill(0, ids[0])
        dense = eng._dense
        out = eng.stack.forward(ids, torch.arange(700, device="cuda")[None],
                                lambda i, q, k, v, f=dense: f(q, k, v, None), slice(-1, None))[0, -1]
        assert _rel(out, ref) < 1e-4, compile
        assert int(b.tokens[0]) == int(ref.argmax())


def test_block_topk_prefill_and_bf16_engine_run(model):
    m = model.to(torch.bfloat16)
    try:
        prompts = [torch.randint(0, 512, (4096,)).tolist()]
        out = Engine(m, prefill="block_topk", decode="quest", sparsity=0.9).generate(prompts, 8)
        assert len(out[0]) == 8
    finally:
        model.float()


@pytest.mark.parametrize("prefill,decode", [(None, None), ("block_topk", "snapkv"), ("vertical_slash", "ada_snapkv"),
                                            ("flexprefill", "quest"), (None, "streaming")])
def test_engine_prefill_never_syncs(model, prefill, decode):
    """A prompt's whole prefill (every layer, the sparse prefill method, the decode method filling its cache, the
    first token) queues GPU work without waiting for it: no host sync per layer. CUDA's sync debug mode raises on any
    synchronising call."""
    m = model.to(torch.bfloat16)
    try:
        eng = Engine(m, prefill=prefill, decode=decode, sparsity=0.9)
        ids = torch.randint(0, 512, (4096,), device="cuda")
        eng.batch([4096], 8).prefill(0, ids)  # compilation and autotuning outside the check
        b = eng.batch([4096], 8)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            tok = b.prefill(0, ids)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        assert 0 <= int(tok) < 512
    finally:
        model.float()


def test_rope_append_kernel_bf16():
    from leanformer.infer.rope_append import rope_append_reference, rope_append_triton

    g = torch.Generator(device="cuda").manual_seed(3)
    b, hq, hk, c, d = 4, 28, 4, 300, 128
    q = torch.randn(b, 1, hq * d, device="cuda", dtype=torch.bfloat16, generator=g).view(b, hq, d)
    k, v = (torch.randn(b, hk, d, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(2))
    ang = torch.rand(b, d // 2, device="cuda", generator=g) * 100
    cos, sin = (torch.cat([f(ang)] * 2, -1).to(torch.bfloat16) for f in (torch.cos, torch.sin))
    outs = []
    for fn in (rope_append_reference, rope_append_triton):
        kc = torch.zeros(b, hk, c, d, device="cuda", dtype=torch.bfloat16)
        vc = torch.zeros_like(kc)
        lens = torch.randint(0, c, (b, hk), device="cuda", generator=g, dtype=torch.int32) if not outs else \
            outs[0][3].clone() - 1
        if not outs:
            lens0 = lens.clone()
        outs.append((fn(q, k, v, cos, sin, kc, vc, lens), kc, vc, lens))
    assert torch.equal(outs[0][3], lens0 + 1) and torch.equal(outs[1][3], lens0 + 1)
    for x, y in zip(outs[0][:3], outs[1][:3]):
        assert _rel(x, y) < 1e-2


def test_rope_layout_kernel_bf16():
    """The prefill's rotary + layout kernel at Qwen2.5-7B's heads against the fp32 reference, and the layout alone
    exactly."""
    from leanformer.infer.layers import rope_heads, to_heads
    from leanformer.infer.rope_layout import rope_heads_triton

    g = torch.Generator(device="cuda").manual_seed(4)
    t, d = 4099, 128
    qkv = torch.randn(1, t, 36 * d, device="cuda", dtype=torch.bfloat16, generator=g)
    q, v = qkv[..., :28 * d].view(1, t, 28, d), qkv[..., 32 * d:].view(1, t, 4, d)
    ang = torch.rand(1, t, d // 2, device="cuda", generator=g) * 1000
    cos, sin = (torch.cat([f(ang)] * 2, -1).to(torch.bfloat16) for f in (torch.cos, torch.sin))
    assert _rel(rope_heads_triton(q, cos, sin), rope_heads(q.float(), cos.float(), sin.float())) < 4e-3
    assert torch.equal(rope_heads_triton(v), to_heads(v))


def test_long_row_topk_kernel():
    """Quest's page choice at 128K: rows of 8K+ page scores, -inf past the current page."""
    from leanformer.sparse.kernels.block_select import topk_rows, topk_rows_triton

    g = torch.Generator(device="cuda").manual_seed(5)
    s = torch.randn(2, 4, 8200, device="cuda", generator=g)
    s[..., 8000:] = float("-inf")
    got = topk_rows_triton(s, 511)
    assert torch.equal(got.long(), topk_rows(s, 511).long())
