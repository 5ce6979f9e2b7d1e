"""The inference engine against Hugging Face's own model and against the logical (sparse.apply) methods: same
logits, same greedy tokens, caches of the methods' budgets, batches of unequal rows equal to one row at a time."""

from __future__ import annotations

import pytest
import torch

import leanformer.sparse as sparse
from leanformer.errors import UserError
from leanformer.infer import Engine
from leanformer.infer.layers import DecoderStack
from leanformer.sparse.base import PrefillMethod, SparsePrefillParams, info_dict

transformers = pytest.importorskip("transformers")

# (decode method, native-budget parameters small enough to evict at ~200 tokens)
DECODES = [("snapkv", dict(capacity=48, window=16, kernel=5, local=8)),
           ("ada_snapkv", dict(capacity=48, window=16, kernel=5, local=8)),
           ("streaming", dict(window=40)),
           ("quest", dict(token_budget=48, page_size=8))]


def _model(kind="qwen2", layers=2, **kw):
    torch.manual_seed(0)
    cls = {"qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
           "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
           "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM),
           "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM)}[kind]
    cfg = cls[0](**{"vocab_size": 97, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": layers,
                    "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 4096, **kw})
    return cls[1](cfg).eval()


@pytest.fixture(scope="module")
def model():
    return _model()


def _hf_greedy(model, ids, n):
    out = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False, min_new_tokens=n)
    return out[0, len(ids):].tolist()


@pytest.mark.parametrize("kind", ["llama", "qwen2", "qwen3", "mistral"])
def test_stack_logits_equal_the_models_forward(kind):
    m = _model(kind)
    ids = torch.randint(0, 97, (2, 37))
    stack = DecoderStack(m)
    pos = torch.arange(37)[None].expand(2, -1)
    out = stack.forward(ids, pos, lambda i, q, k, v: torch.nn.functional.scaled_dot_product_attention(
        q, k, v, is_causal=True, enable_gqa=True))
    with torch.no_grad():
        ref = m(ids).logits
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_dense_generation_equals_hf_generate(model):
    ids = torch.randint(0, 97, (150,)).tolist()
    assert Engine(model).generate([ids], 12)[0] == _hf_greedy(model, ids, 12)


@pytest.mark.parametrize("method,params", DECODES + [("quest", dict(token_budget=8, page_size=8))])
def test_physical_eviction_generates_the_logical_methods_tokens(model, method, params):
    """Same kept set, same tokens: the engine's cache holds only what the logical method reads (Quest with a
    one-page budget too: only the current page, no page chosen)."""
    ids = torch.randint(0, 97, (211,)).tolist()
    eng = Engine(model, decode=method, sparsity=None, **params)
    got = eng.generate([ids], 10)[0]
    with sparse.apply(model, decode=method, sparsity=None, **params):
        want = _hf_greedy(model, ids, 10)
    assert got == want
    assert eng.last_batch.decode_sparsity() > 0.5


@pytest.mark.parametrize("method", ["block_topk", "vertical_slash", "flexprefill", "streaming"])
def test_sparse_prefill_equals_sparse_apply(model, method):
    ids = torch.randint(0, 97, (520,)).tolist()
    kw = {"block_size": 16} if method == "block_topk" else {}
    eng = Engine(model, prefill=method, sparsity=0.6, **kw)
    got = eng.generate([ids], 6)[0]
    with sparse.apply(model, prefill=method, sparsity=0.6, **kw):
        want = _hf_greedy(model, ids, 6)
    assert got == want
    assert eng.last_batch.prefill_sparsity() > 0.1


def test_evicted_cache_memory_equals_its_budget(model):
    """SnapKV at 1/8 of a 400-token prompt keeps 50 keys per head (+ room for the new tokens); Ada-SnapKV's pool
    holds the same total; dense keeps every token."""
    t, new = 400, 4
    dense = Engine(model).batch([t], new)
    per_slot = dense.nbytes() / (t + new)
    for method in ("snapkv", "ada_snapkv"):
        b = Engine(model, decode=method, sparsity=0.875).batch([t], new)
        assert b.nbytes() == per_slot * (50 + new)
    q = Engine(model, decode="quest", sparsity=0.875).batch([t], new)
    assert q.nbytes() > dense.nbytes()  # Quest keeps the whole cache and adds page summaries


def test_ada_snapkv_heads_keep_different_counts_in_one_pool(model):
    ids = torch.randint(0, 97, (300,))
    eng = Engine(model, decode="ada_snapkv", sparsity=0.8, capacity=60, window=16, kernel=5, local=8)
    b = eng.batch([300], 3)
    b.prefill(0, ids)
    lens = b.caches[0].lens[0]
    assert int(lens.sum()) == 2 * 60  # H_kv x budget, shared
    starts = b.caches[0].starts[0]
    assert int(starts[1]) == int(lens[0]) + 3  # head 1 starts after head 0's keys and its room


def test_unequal_rows_equal_one_row_at_a_time(model):
    prompts = [torch.randint(0, 97, (n,)).tolist() for n in (50, 131, 77)]
    for method, params in [(None, {}), *DECODES]:
        batched = Engine(model, decode=method, sparsity=None, **params).generate(prompts, 8)
        single = [Engine(model, decode=method, sparsity=None, **params).generate([p], 8)[0] for p in prompts]
        assert batched == single, method


PREFILLS = [("block_topk", dict(block_size=16)), ("vertical_slash", {}), ("flexprefill", {}), ("streaming", {}),
            ("block_topk", dict(block_size=16, dense_layers=[0]))]


@pytest.mark.parametrize("prefill,decode,params", [(None, None, {})] + [(None, m, p) for m, p in DECODES]
                         + [(m, None, p) for m, p in PREFILLS])
def test_rows_prefilled_together_equal_each_prefilled_alone(model, prefill, decode, params):
    """Right-padded rows in one prefill: each row's first token, cache (every layer's kept keys and values, lengths
    and page summaries) and measured sparsity equal its prefill alone (rows of one length share a sparse call)."""
    torch.manual_seed(1)
    prompts = [torch.randint(0, 97, (n,)) for n in (300, 211, 277, 211)]
    kw = dict(prefill=prefill, decode=decode, sparsity=0.6 if prefill else None, **params)
    together = Engine(model, **kw).batch([len(p) for p in prompts], 4)
    first = together.prefill_rows([0, 1, 2, 3], prompts)
    alone = Engine(model, **kw).batch([len(p) for p in prompts], 4)
    for r, p in enumerate(prompts):
        assert int(alone.prefill(r, p)) == int(first[r])
    for a, b in zip(together.caches, alone.caches):
        assert torch.equal(a.lens, b.lens)
        for name, x in {"k": a.k, "v": a.v, **a.extra}.items():
            y = b.k if name == "k" else b.v if name == "v" else b.extra[name]
            torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-5, msg=f"{name} differs")
    assert torch.equal(together.tokens, alone.tokens) and torch.equal(together.pos, alone.pos)
    for r in range(4):
        assert together.prefill_sparsity(r) == pytest.approx(alone.prefill_sparsity(r), rel=1e-6, abs=1e-9)
    if prefill:
        assert 0.1 < together.prefill_sparsity(0) and together.prefill_sparsity(0) != together.prefill_sparsity(1)


class _ContentCounts(PrefillMethod):
    """Dense attention that reports a kept-pair count of each (row, head) from its content (the share of positive
    query entries): rows of one length then differ, so the engine must attribute a shared call's counts row by row."""

    name = "content_counts"
    Params = SparsePrefillParams

    calls = 0

    def __call__(self, q, k, v, sparsity=None, scale=None):
        self.calls += 1
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=True)
        total = q.shape[2] * (q.shape[2] + 1) // 2
        kept = ((q > 0).double().mean((2, 3)) * total).round()  # [B, H]
        return out, info_dict(self.name, sparsity, kept.sum(), total * q.shape[0] * q.shape[1], 0, "reference",
                              per_head_sparsity=1 - kept / total)


def test_rows_of_one_length_share_a_call_and_keep_their_own_counts(model):
    torch.manual_seed(2)
    prompts = [torch.randint(0, 97, (n,)) for n in (150, 150, 90, 150)]
    method = _ContentCounts()
    together = Engine(model, prefill=method).batch([len(p) for p in prompts], 2)
    together.prefill_rows([0, 1, 2, 3], prompts)
    assert method.calls == 2 * 2  # two lengths, two layers
    alone = Engine(model, prefill=_ContentCounts()).batch([len(p) for p in prompts], 2)
    for r, p in enumerate(prompts):
        alone.prefill(r, p)
    got = [together.prefill_sparsity(r) for r in range(4)]
    assert len({round(x, 9) for x in got}) == 4  # the rows of length 150 differ: a shared mean would not
    assert got == pytest.approx([alone.prefill_sparsity(r) for r in range(4)], rel=1e-6)


def test_prefill_groups_stay_within_the_token_budget(model):
    eng = Engine(model, prefill_tokens=600)
    assert eng.prefill_groups([200, 250, 100, 700, 50]) == [[0, 1], [2], [3], [4]]
    assert Engine(model, prefill_tokens=1).prefill_groups([3, 3]) == [[0], [1]]
    assert len(Engine(model).prefill_groups([2000] * 24)) == 1  # the default: ~4M tokens at d_ff 128, fp32
    with pytest.raises(UserError, match="prefill_tokens=0"):
        Engine(model, prefill_tokens=0)


def test_stop_callback_ends_generation_early(model):
    calls = []

    def stop(tokens):
        calls.append(len(tokens[0]))
        return True

    out = Engine(model).generate([[1, 2, 3, 4]], 40, stop=stop, check_every=4)
    assert len(out[0]) == 5 and calls == [5]


def test_refusals(model):
    with pytest.raises(UserError, match="position limit"):
        Engine(model).batch([5000], 1)
    with pytest.raises(UserError, match="Llama-family"):
        Engine(torch.nn.Linear(2, 2))
    b = Engine(model).batch([10], 2)
    b.prefill(0, torch.arange(10))
    b.step()
    b.step()
    with pytest.raises(UserError, match="sized for 2 new tokens"):
        b.step()


def test_quest_int8_summaries_are_refused_by_the_engine(model):
    with pytest.raises(UserError, match="metadata='int8'"):
        Engine(model, decode="quest", metadata="int8")


@pytest.mark.parametrize("kind", ["qwen2", "qwen3"])  # q/k/v with biases; per-head q/k norms
def test_packed_projections_compute_the_same_model_in_the_same_memory(kind):
    """pack_projections: q/k/v and gate/up become views of one matrix each (no memory added), the model's own
    forward and the engine's logits and tokens are unchanged, and the engine uses the packed matrices (one
    product each); a converted model's stale copies are dropped, and packing again restores them."""
    from leanformer.infer.layers import GATE_UP, QKV, _packed, pack_projections

    m = _model(kind, intermediate_size=96)  # every projection's row count distinct: 128 q/k/v, 32 k, 96 gate
    ids = torch.randint(0, 97, (1, 60), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = m(ids).logits
    want = Engine(m, decode="snapkv", capacity=48, window=16, kernel=5, local=8).generate([ids[0].tolist()], 8)
    before = sum(p.numel() for p in m.parameters())
    assert pack_projections(m) == 2 and pack_projections(m) == 2  # idempotent
    a, mlp = m.model.layers[0].self_attn, m.model.layers[0].mlp
    weight = getattr(a, QKV)[0]
    assert a.k_proj.weight.untyped_storage().data_ptr() == weight.untyped_storage().data_ptr()
    assert sum(p.numel() for p in m.parameters()) == before
    with torch.no_grad():
        torch.testing.assert_close(m(ids).logits, ref, rtol=0, atol=0)
    calls = []
    orig = torch.nn.functional.linear

    def counting(x, w, b=None):
        calls.append(w.shape[0])
        return orig(x, w, b)

    def attend(i, q, k, v):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)

    def step(i, q, k, v, cos, sin):  # a decode step's shapes: the attention itself does not matter here
        return q

    torch.nn.functional.linear = counting
    try:
        out = DecoderStack(m).forward(ids, torch.arange(60)[None], attend)
        prompt, calls[:] = list(calls), []
        DecoderStack(m).forward(ids[:, :1], torch.zeros(1, 1, dtype=torch.long), step=step)
    finally:
        torch.nn.functional.linear = orig
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    gu = getattr(mlp, GATE_UP)[0].shape[0]
    # a prompt: one product of q/k/v's rows, none of k's alone; gate and up apart (SiLU x up on contiguous tensors)
    assert weight.shape[0] in prompt and a.k_proj.weight.shape[0] not in prompt
    assert mlp.gate_proj.weight.shape[0] in prompt and gu not in prompt
    # a decode step: one product of q/k/v's rows and one of gate/up's, none of k's or gate's alone
    assert {weight.shape[0], gu} <= set(calls)
    assert a.k_proj.weight.shape[0] not in calls and mlp.gate_proj.weight.shape[0] not in calls
    assert Engine(m, decode="snapkv", capacity=48, window=16, kernel=5, local=8).generate([ids[0].tolist()], 8) == want
    m.double()  # converted: the views are gone, and so is the stale copy
    assert _packed((a.q_proj, a.k_proj, a.v_proj), a, QKV) is None and getattr(a, QKV) is None
    assert pack_projections(m) == 2 and getattr(a, QKV)[0].dtype == torch.float64


def test_dense_layers_prefill_as_sparse_apply_does(model):
    """The engine leaves the same layers dense as ``sparse.apply`` (same tokens), and its measured prefill sparsity
    counts them: every layer dense is the dense engine."""
    ids = torch.randint(0, 97, (300,)).tolist()
    kw = dict(prefill="vertical_slash", sparsity=0.8, block_size=16, local=16, window=32)
    eng = Engine(model, dense_layers=[0], **kw)
    got = eng.generate([ids], 6)[0]
    with sparse.apply(model, dense_layers=[0], **kw):
        assert got == _hf_greedy(model, ids, 6)
    one = eng.last_batch.prefill_sparsity()
    sparse_all = Engine(model, **kw)
    sparse_all.generate([ids], 1)
    assert one == pytest.approx(sparse_all.last_batch.prefill_sparsity() / 2, abs=0.02)  # one layer of two dense
    every = Engine(model, dense_layers=[0, 1], **kw)
    assert every.generate([ids], 6)[0] == Engine(model).generate([ids], 6)[0]
    assert every.last_batch.prefill_sparsity() == 0.0
    with pytest.raises(UserError, match="has 2 layers"):
        Engine(model, dense_layers=[5], **kw)
