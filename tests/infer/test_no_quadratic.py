"""No tensor of size O(T^2) on the inference path: a forward at a length whose [T, T] mask the test does not allow
(a watcher sees every tensor any op makes), through ``sparse.apply`` and through the engine, for every prefill
method and the evicting decode methods."""

from __future__ import annotations

import importlib

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import leanformer.sparse as sparse
from leanformer.infer import Engine

transformers = pytest.importorskip("transformers")
ta = importlib.import_module("leanformer.sparse.kernels.tile_attention")

T = 8192


class Largest(TorchDispatchMode):
    """Records the largest storage any op returns."""

    def __init__(self):
        super().__init__()
        self.bytes, self.op = 0, None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor) and t.untyped_storage().nbytes() > self.bytes:
                self.bytes, self.op = t.untyped_storage().nbytes(), func
        return out


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                   num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=1 << 16)
    return transformers.LlamaForCausalLM(cfg).eval()


@pytest.mark.parametrize("prefill,decode", [("block_topk", None), ("vertical_slash", None), ("flexprefill", None),
                                            ("streaming", None), (None, "snapkv"), (None, "quest")])
def test_no_t_by_t_tensor(model, monkeypatch, prefill, decode):
    # the references walk the prompt in strips; a small strip budget makes a [T, T] mask impossible to hide
    monkeypatch.setattr(ta, "REFERENCE_STRIP", 1 << 18)
    allowed = T * T - 1  # smaller than one [T, T] bool mask (estimation is O(window x T): 512 x T x heads fp32)
    ids = torch.randint(0, 64, (1, T))
    w = Largest()
    with w, sparse.apply(model, prefill=prefill, decode=decode, sparsity=0.9), torch.no_grad():
        model(ids, logits_to_keep=1)
    assert w.bytes <= allowed, (w.bytes, w.op)
    w = Largest()
    with w:
        Engine(model, prefill=prefill, decode=decode, sparsity=0.9).generate([ids[0].tolist()], 2)
    assert w.bytes <= allowed, (w.bytes, w.op)


def test_strip_reference_equals_one_strip(monkeypatch):
    from leanformer.sparse.kernels import from_tiles

    g = torch.Generator().manual_seed(1)
    q, k, v = torch.randn(1, 2, 300, 8, generator=g), torch.randn(1, 1, 300, 8, generator=g), torch.randn(1, 1, 300, 8)
    pat = from_tiles(torch.rand(1, 2, 10, 10, generator=g) < 0.5, 32, 300)
    whole = ta.tile_attention_reference(q, k, v, pat)
    monkeypatch.setattr(ta, "REFERENCE_STRIP", 1)
    torch.testing.assert_close(ta.tile_attention_reference(q, k, v, pat), whole)
