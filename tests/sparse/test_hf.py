"""The Hugging Face attach point on tiny random Llama / Qwen2 / Mistral models (no downloads)."""

from __future__ import annotations

import pytest
import torch

from leanformer import sparse
from leanformer.errors import UserError

transformers = pytest.importorskip("transformers")

FAMILIES = {
    "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
    "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
    "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
}
PAIRS = [("vertical_slash", "quest"), ("block_topk", "snapkv"), ("flexprefill", "ada_snapkv"),
         ("streaming", "streaming"), (None, "quest"), ("vertical_slash", None)]


def small(pre, dec) -> dict:
    """Small-shape parameters for this pair (``apply`` rejects a parameter neither method has)."""
    out = {"block_size": 8} if pre not in (None, "dense") else {}
    if dec == "quest":
        out["page_size"] = 4
    return out


def tiny(family: str):
    torch.manual_seed(42)
    cfg_cls, model_cls = FAMILIES[family]
    cfg = cfg_cls(vocab_size=101, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=256, pad_token_id=0)
    return model_cls(cfg).eval()


def generate(model, ids, n=6):
    return model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False)


@pytest.fixture(scope="module")
def prompt():
    return torch.randint(1, 101, (2, 41), generator=torch.Generator().manual_seed(42))


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("pre,dec", PAIRS)
def test_sparsity_zero_generates_the_same_tokens(family, pre, dec, prompt):
    model = tiny(family)
    ref = generate(model, prompt)
    before = model.config._attn_implementation
    with sparse.apply(model, prefill=pre, decode=dec, sparsity=0.0, **small(pre, dec)) as session:
        out = generate(model, prompt)
    assert torch.equal(out, ref)
    assert model.config._attn_implementation == before
    phases = {row["phase"] for row in session.stats}
    assert ("prefill" in phases) == (pre is not None)
    assert ("decode" in phases) == (dec is not None)


@pytest.mark.parametrize("dec", ["quest", "snapkv", "ada_snapkv", "streaming"])
def test_high_sparsity_decode_reads_fewer_keys(dec, prompt):
    model = tiny("llama")
    params = small("vertical_slash", dec)
    with sparse.apply(model, prefill="vertical_slash", decode=dec, sparsity=0.9, **params) as session:
        out = generate(model, prompt)
    assert out.shape == (2, 47)
    steps = [row for row in session.stats if row["phase"] == "decode"]
    assert len(steps) == 5 * 2  # 5 steps after the first token, 2 layers
    for row in steps:
        # keys_total counts every (batch, head, cache position); the methods read well under a third of it
        assert row["keys_read"] < 0.34 * row["keys_total"], row
        assert row["sparsity"] > 0.66


def test_restores_on_exception_and_rejects_padding(prompt):
    model = tiny("qwen2")
    before = model.config._attn_implementation
    with pytest.raises(RuntimeError, match="boom"):
        with sparse.apply(model, prefill="block_topk", sparsity=0.5, block_size=8):
            raise RuntimeError("boom")
    assert model.config._attn_implementation == before
    mask = torch.ones_like(prompt)
    mask[0, :3] = 0
    with pytest.raises(UserError, match="unpadded"):
        with sparse.apply(model, prefill="block_topk", sparsity=0.5, block_size=8):
            model.generate(prompt, attention_mask=mask, max_new_tokens=2, do_sample=False)
    assert model.config._attn_implementation == before
    assert torch.equal(generate(model, prompt), generate(model, prompt))


def test_parameter_routing_errors():
    model = tiny("mistral")
    with pytest.raises(UserError, match="belongs to neither"):
        with sparse.apply(model, prefill="block_topk", decode="quest", window=3):
            pass
    with pytest.raises(UserError, match="unknown decode method"):
        with sparse.apply(model, decode="h2o"):
            pass
    with pytest.raises(UserError, match="sparsity"):
        with sparse.apply(model, decode="quest", sparsity=1.0):
            pass


def test_separate_phase_sparsities(prompt):
    model = tiny("llama")
    with sparse.apply(model, prefill="streaming", decode="streaming", sparsity=0.9, prefill_sparsity=0.0,
                      **{"block_size": 8}) as session:
        generate(model, prompt, n=3)
    pre = [r for r in session.stats if r["phase"] == "prefill"]
    dec = [r for r in session.stats if r["phase"] == "decode"]
    assert all(r["sparsity"] == 0.0 for r in pre) and all(r["sparsity"] > 0.8 for r in dec)


def test_dense_layers_run_those_layers_dense_and_count_them(prompt):
    """``dense_layers``: the listed layers' prompts attend densely, the others sparsely; every layer's call is in
    the stats, so the measured sparsity counts the dense ones."""
    model = tiny("llama")
    with torch.no_grad():
        dense = model(prompt).logits
    kw = dict(prefill="vertical_slash", sparsity=0.6, block_size=8, local=8, window=8, sinks=1)
    with torch.no_grad(), sparse.apply(model, dense_layers=[0, 1], **kw) as s:
        every = model(prompt).logits
    torch.testing.assert_close(every, dense)  # both layers dense: the dense model
    assert [r["sparsity"] for r in s.stats] == [0.0, 0.0]
    with torch.no_grad(), sparse.apply(model, dense_layers=[0], **kw) as s:
        first = model(prompt).logits
    by_layer = {r["layer"]: r for r in s.stats}
    assert by_layer[0]["method"] == "dense" and by_layer[0]["sparsity"] == 0.0
    assert by_layer[1]["method"] == "vertical_slash" and by_layer[1]["sparsity"] > 0.3
    with torch.no_grad(), sparse.apply(model, **kw):
        none = model(prompt).logits
    assert not torch.allclose(first, dense) and not torch.allclose(first, none)


@pytest.mark.parametrize("bad, message", [([2], r"the model has 2 layers \(0-1\)"), ([-1], "integers >= 0"),
                                          (0, "give a list"), (["0"], "integers >= 0")])
def test_dense_layers_out_of_range_or_not_indices_are_one_line_errors(bad, message):
    model = tiny("qwen2")
    with pytest.raises(UserError, match=message):
        with sparse.apply(model, prefill="block_topk", sparsity=0.5, dense_layers=bad):
            pass
