import math

import pytest
import torch

from leanformer.nn import KVCache, RMSNorm, Rotary, apply_rotary, attention, repeat_kv
from leanformer.nn.attention import causal_mask


def naive(q, k, v, t_offset=0):
    """fp64 softmax(QK^T/sqrt(d))V with bottom-right causal alignment, written out by hand."""
    q, k, v = q.double(), k.double(), v.double()
    k, v = repeat_kv(k, q.shape[1] // k.shape[1]), repeat_kv(v, q.shape[1] // k.shape[1])
    s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    tq, tk = q.shape[-2], k.shape[-2]
    for i in range(tq):
        s[..., i, i + tk - tq + 1:] = float("-inf")
    return torch.softmax(s, -1) @ v


@pytest.mark.parametrize("backend", ["sdpa", "math"])
@pytest.mark.parametrize("tq,tk", [(13, 13), (1, 29), (5, 21)])
def test_attention_backends_match_naive_with_gqa(backend, tq, tk):
    q = torch.randn(2, 6, tq, 8)
    k, v = torch.randn(2, 2, tk, 8), torch.randn(2, 2, tk, 8)
    out = attention(q, k, v, backend=backend)
    torch.testing.assert_close(out.double(), naive(q, k, v), rtol=1e-5, atol=1e-5)


def test_attention_extra_mask_combines_with_causal_and_errors():
    q, k, v = torch.randn(1, 2, 9, 4), torch.randn(1, 2, 9, 4), torch.randn(1, 2, 9, 4)
    keep = torch.rand(9, 9) > 0.3
    keep.fill_diagonal_(True)
    a = attention(q, k, v, mask=keep, backend="sdpa")
    b = attention(q, k, v, mask=keep & causal_mask(9, 9), causal=False, backend="math")
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"query heads \(3\) must be a multiple of key/value heads \(2\)"):
        attention(torch.randn(1, 3, 4, 4), k[:, :, :4], v[:, :, :4])
    with pytest.raises(ValueError, match="unknown attention backend 'fast'"):
        attention(q, k, v, backend="fast")


def test_kv_cache_update_and_overflow():
    c = KVCache(1, 2, 5, 4)
    k1, v1 = c.update(0, torch.ones(1, 2, 3, 4), torch.ones(1, 2, 3, 4))
    assert k1.shape == (1, 2, 3, 4)
    k2, _ = c.update(3, 2 * torch.ones(1, 2, 2, 4), torch.ones(1, 2, 2, 4))
    assert k2.shape == (1, 2, 5, 4) and k2[0, 0, 4, 0] == 2 and k2[0, 0, 0, 0] == 1
    with pytest.raises(ValueError, match="KV cache overflow"):
        c.update(5, torch.ones(1, 2, 1, 4), torch.ones(1, 2, 1, 4))


def test_rotary_is_a_relative_rotation_and_partial():
    rot = Rotary(8)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)

    def score(i, j):
        ci, si = rot(torch.tensor([float(i)]))
        cj, sj = rot(torch.tensor([float(j)]))
        return (apply_rotary(q, ci, si) * apply_rotary(k, cj, sj)).sum()

    torch.testing.assert_close(score(3, 1), score(12, 10), rtol=1e-5, atol=1e-5)  # depends on i - j only
    x = torch.randn(1, 1, 4, 10)
    cos, sin = Rotary(8)(torch.arange(4))
    y = apply_rotary(x, cos, sin)
    assert torch.equal(y[..., 8:], x[..., 8:])  # channels past rot_dim untouched
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1))


def test_rmsnorm_unit_rms():
    x = torch.randn(3, 7, 16) * 5
    y = RMSNorm(16)(x)
    torch.testing.assert_close(y.pow(2).mean(-1), torch.ones(3, 7), rtol=1e-4, atol=1e-4)
