import importlib.util
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from leanformer.errors import ConfigError
from leanformer.kvcache.dmc_cache import DMCCache
from leanformer.kvcache.dmc_kernels import paged_decode_reference
from leanformer.models import dmc_ops as ops
from leanformer.nn.attention import attention

B, H, D, WINDOW = 2, 3, 8, 4


def stream(t, seed=42):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, H, t, D, generator=g), torch.randn(B, H, t, D, generator=g),
            torch.randn(B, H, t, generator=g), torch.rand(B, H, t, generator=g) + 0.1)


def simulate(k, v, logit, omega):
    """Per-head Python lists: the slot averages the paper's update produces, with groups capped at WINDOW."""
    out = {}
    for b in range(B):
        for h in range(H):
            slots = []
            for t in range(k.shape[2]):
                w = float(omega[b, h, t])
                if logit[b, h, t] > 0 and slots and slots[-1][3] < WINDOW:
                    ks, vs, ws, n = slots[-1]
                    slots[-1] = (ks + w * k[b, h, t], vs + w * v[b, h, t], ws + w, n + 1)
                else:
                    slots.append((w * k[b, h, t], w * v[b, h, t], w, 1))
            out[b, h] = (torch.stack([s[0] / s[2] for s in slots]), torch.stack([s[1] / s[2] for s in slots]))
    return out


def feed(cache, k, v, logit, omega, start=0):
    for t in range(start, k.shape[2]):
        cache.update(k[:, :, t], v[:, :, t], logit[..., t], omega[..., t])


def assert_matches(cache, expected):
    kd, vd, lengths = cache.dense()
    for (b, h), (ks, vs) in expected.items():
        assert int(lengths[b, h]) == len(ks)
        torch.testing.assert_close(kd[b, h, :len(ks)], ks)
        torch.testing.assert_close(vd[b, h, :len(vs)], vs)


def test_update_appends_or_merges_like_the_paper_recurrence():
    k, v, logit, omega = stream(45)
    cache = DMCCache(B, H, D, 64, page_size=16, window=WINDOW, impl="reference")
    feed(cache, k, v, logit, omega)
    cache.check()
    assert_matches(cache, simulate(k, v, logit, omega))
    assert int(cache.next_page) == int(((cache.lengths + 15) // 16).sum())  # pages only as needed


def test_parallel_prefill_then_update_equals_token_by_token():
    k, v, logit, omega = stream(41)
    merge = ops.cap_merges(logit[..., :30] > 0, WINDOW)
    cache = DMCCache(B, H, D, 64, page_size=16, window=WINDOW, impl="reference")
    cache.prefill(*ops.partial_states(k[:, :, :30], v[:, :, :30], merge.float(), omega[..., :30], WINDOW), merge)
    feed(cache, k, v, logit, omega, start=30)
    assert_matches(cache, simulate(k, v, logit, omega))


def test_paged_decode_reference_equals_masked_dense_attention():
    k, v, logit, omega = stream(37)
    cache = DMCCache(B, H, D, 64, page_size=16, window=WINDOW, impl="reference")
    feed(cache, k, v, logit, omega)
    q = torch.randn(B, 2 * H, D)
    kd, vd, lengths = cache.dense()
    mask = (torch.arange(kd.shape[2]) < lengths[..., None]).repeat_interleave(2, 1)[:, :, None]
    ref = attention(q[:, :, None], kd, vd, causal=False, mask=mask)[:, :, 0]
    torch.testing.assert_close(cache.attend(q), ref)
    torch.testing.assert_close(paged_decode_reference(q, cache.k_pages, cache.v_pages, cache.page_table,
                                                      cache.lengths), ref)


def test_exhausted_pool_and_bad_settings_are_reported():
    k, v, logit, omega = stream(20)
    cache = DMCCache(B, H, D, 64, page_size=16, n_pages=B * H, window=WINDOW, impl="reference")
    feed(cache, k, v, -torch.ones_like(logit), omega)  # all appends: 20 slots > one page per head
    with pytest.raises(RuntimeError, match="page pool exhausted"):
        cache.check()
    with pytest.raises(ConfigError, match="page_size=24"):
        DMCCache(B, H, D, 64, page_size=24)
    with pytest.raises(ConfigError, match="impl 'cuda'"):
        DMCCache(B, H, D, 64, impl="cuda")


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton not installed")
def test_triton_kernels_match_references_under_the_interpreter():
    """Update and decode kernels vs the PyTorch references (interpreter on CPU; compiled on a GPU)."""
    script = textwrap.dedent("""
        import torch
        from leanformer.kvcache.dmc_cache import DMCCache
        from leanformer.kvcache import dmc_kernels as K
        dev = "cuda" if torch.cuda.is_available() else "cpu"
        torch.manual_seed(42)
        b, h, d, g = 2, 3, 24, 2
        # tiles of 16..64 slots over pages of 16 and 32: a tile spans several pages, or a page several tiles
        for page, blocks in ((16, (16, 64)), (32, (16,))):
            ref, tri = (DMCCache(b, h, d, 80, page_size=page, window=4, impl=i, device=dev)
                        for i in ("reference", "triton"))
            for step in range(21):
                args = (torch.randn(b, h, d, device=dev), torch.randn(b, h, d, device=dev),
                        torch.randn(b, h, device=dev), torch.rand(b, h, device=dev))
                assert torch.equal(ref.update(*args), tri.update(*args))
            for x, y in zip(ref.dense(), tri.dense()):
                torch.testing.assert_close(x, y)
            assert int(ref.next_page) == int(tri.next_page)
            assert len(set(ref.lengths.flatten().tolist())) > 1  # ragged heads
            q = torch.randn(b, h * g, d, device=dev)
            want = ref.attend(q)
            torch.testing.assert_close(tri.attend(q), want)
            for block in blocks:
                for splits in (1, 2, 3):
                    got = K.paged_decode_triton(q, tri.k_pages, tri.v_pages, tri.page_table, tri.lengths,
                                                n_splits=splits, block_n=block)
                    torch.testing.assert_close(got, want)
        from leanformer.models.dmc import DMC, DMCConfig
        model = DMC(DMCConfig(vocab_size=61, d_model=48, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=64,
                              alpha_offset=0.0, window=3)).to(dev).eval()
        x = torch.randint(0, 61, (2, 12), device=dev)
        logits = []
        for impl in ("reference", "triton"):
            caches = model.new_caches(2, 16, impl=impl)
            steps = [model(x[:, :5], caches=caches, pos=0)]
            steps += [model(x[:, i:i + 1], caches=caches, pos=i) for i in range(5, 12)]
            logits.append(torch.cat(steps, 1))
        torch.testing.assert_close(logits[0], logits[1])
        torch.testing.assert_close(logits[1], model(x), rtol=1e-4, atol=1e-4)
        print("ok")
    """)
    env = {**os.environ, "TRITON_INTERPRET": "1" if not torch.cuda.is_available() else "0"}
    src = os.path.join(os.path.dirname(__file__), "..", "..", "src")
    env["PYTHONPATH"] = os.pathsep.join([os.path.abspath(src), env.get("PYTHONPATH", "")])
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr[-3000:]
