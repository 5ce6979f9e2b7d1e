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


class Live(TorchDispatchMode):
    """The peak of the bytes held by the storages ops return, a storage counted until the last tensor made on it (by
    an op under the watcher) is gone."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self.holders: dict[int, set] = {}
        self.sizes: dict[int, int] = {}

    def _gone(self, key, holder):
        holders = self.holders.get(key)
        if holders is not None:
            holders.discard(holder)
            if not holders:
                del self.holders[key]
                self.live -= self.sizes.pop(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        import weakref

        from torch.utils._pytree import tree_flatten

        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or t.untyped_storage().nbytes() == 0:
                continue
            key = t.untyped_storage().data_ptr()
            if key not in self.holders:
                self.holders[key], self.sizes[key] = set(), t.untyped_storage().nbytes()
                self.live += self.sizes[key]
                self.peak = max(self.peak, self.live)
            if id(t) not in self.holders[key]:
                self.holders[key].add(id(t))
                weakref.finalize(t, self._gone, key, id(t))
        return out


@pytest.mark.parametrize("pack", [False, True])
def test_prefill_holds_one_layers_mlp_intermediates_at_a_time(pack):
    """The prefill's peak is the MLP's gate, up and product, ~3 ``[T, d_ff]`` tensors: the previous layer's gate
    and up are gone before the next layer's products (held in the layer loop, they made it ~4.3)."""
    torch.manual_seed(0)
    d_ff, t = 2048, 1024
    cfg = transformers.Qwen2Config(vocab_size=64, hidden_size=64, intermediate_size=d_ff, num_hidden_layers=3,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048)
    eng = Engine(transformers.Qwen2ForCausalLM(cfg).eval(), pack_projections=pack, compile=False)
    b = eng.batch([t], 1)
    with Live() as watch:
        b.prefill(0, torch.randint(0, 64, (t,)))
    units = watch.peak / (t * d_ff * 4)
    assert 3.0 <= units < 3.6, units
