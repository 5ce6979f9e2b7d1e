"""The sweep harness in-process: grid layout, validation before any work, resume, sharding, batched greedy
generation (left padding must not change outputs), stop at </answer>."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from leanformer.errors import UserError
from leanformer.eval import harness
from leanformer.eval.generation import PromptEncoder, generate_batch
from leanformer.eval.store import ResultsStore


def _config(model, store, **kw):
    raw = {"models": [model], "tasks": ["niah", "variable_tracking"], "lengths": [1201], "samples": 3,
           "batch_size": 2, "max_new_tokens": 6, "tokenizer": "byte", "store": str(store), "progress": False,
           "task_params": {"variable_tracking": {"n_chains": 2, "n_hops": 2}}}
    return harness.load_config({**raw, **kw})


def test_grid_layout_and_pairing():
    c = harness.load_config({"models": ["m1", "m2"], "tasks": ["niah", "qa"], "lengths": [101, 203],
                             "prefill": ["vs"], "decode": ["quest"], "methods": ["vs/quest", "dense/dense"],
                             "sparsities": [0.5, 0.9], "method_params": {"vs": {"a": 1}, "quest": {"b": 2}}})
    assert harness.method_pairs(c) == [("dense", "dense"), ("vs", "dense"), ("dense", "quest"), ("vs", "quest")]
    cells = harness.build_grid(c)
    assert len(cells) == 2 * 2 * 2 * (1 + 3 * 2)
    assert len({x["key"] for x in cells}) == len(cells)
    assert all(x["sparsity"] == 0.0 for x in cells if x["prefill_method"] == x["decode_method"] == "dense")
    both = next(x for x in cells if x["prefill_method"] == "vs" and x["decode_method"] == "quest")
    assert both["params"] == {"prefill": {"a": 1}, "decode": {"b": 2}}
    assert harness.build_grid(c) == cells  # deterministic keys and order
    shards = [harness.shard(cells, r, 3) for r in range(3)]
    assert sorted(x["key"] for s in shards for x in s) == sorted(x["key"] for x in cells)


@pytest.mark.parametrize("change,message", [
    ({"tasks": ["niah", "haystack"]}, "unknown task 'haystack'; choose from niah, variable_tracking"),
    ({"prefill": ["magic"]}, "unknown prefill method 'magic'; choose from dense"),
    ({"decode": ["magic"]}, "unknown decode method 'magic'; choose from dense"),
    ({"sparsities": [1.0], "methods": ["dense/dense"]}, r"sparsity 1.0 is outside \[0, 1\)"),
    ({"lengths": [1201, 4091]}, "length 4091 is beyond the context of model"),
    ({"task_params": {"niah": {"n_needles": 1, "n_queries": 2}}}, "n_queries"),
    ({"task_params": {"niah": {"depth": 1}}}, "task_params.niah"),
])
def test_bad_inputs_fail_before_any_work(tiny_model, tmp_path, change, message):
    store = tmp_path / "r.db"
    with pytest.raises(UserError, match=message):
        harness.run_sweep(_config(tiny_model, store, **change))
    assert not store.exists()


def test_run_resume_and_shards(tiny_model, tmp_path):
    c = _config(tiny_model, tmp_path / "r.db")
    first = harness.run_sweep(c)
    assert first == {"cells": 2, "done_before": 0, "added": 6}
    again = harness.run_sweep(c)
    assert again == {"cells": 2, "done_before": 6, "added": 0}
    with ResultsStore(c.store) as store:
        rows = store.rows()
    assert len(rows) == 6 and {(r["task"], r["sample"]) for r in rows} == {(t, i) for t in
                                                                         ("niah", "variable_tracking")
                                                                         for i in range(3)}
    for r in rows:
        assert r["seed"] == r["sample"] and 0.0 <= r["score"] <= 1.0 and r["output"].startswith("<answer>")
        assert 0.95 * 1201 <= r["prompt_tokens"] <= 1201 + len("<answer>")
        assert 1 <= r["output_tokens"] <= 6 and r["prefill_sparsity"] == r["decode_sparsity"] == 0.0
        # Per layer: q, o (32x32), k, v (32x16), SwiGLU (3x32x64), 2 norms; + final norm; embeddings excluded.
        assert r["model_params"] == 2 * (2 * 32 * 32 + 2 * 32 * 16 + 3 * 32 * 64 + 2 * 32) + 32
        assert r["answer"].startswith("<answer>") and r["time_s"] > 0
    # Ranks of a 2-way split write disjoint shards into one store; together they equal the single-process run.
    c2 = _config(tiny_model, tmp_path / "s.db")
    assert [harness.run_sweep(c2, rank=r, world=2)["added"] for r in (0, 1)] == [3, 3]
    with ResultsStore(c2.store) as store:
        sharded = {(r["cell_key"], r["sample"]): r["output"] for r in store.rows()}
    assert sharded == {(r["cell_key"], r["sample"]): r["output"] for r in rows}


def test_left_padded_batches_match_single_samples(tiny_model):
    from leanformer.data import ByteTokenizer
    from leanformer.eval.models import load_model

    model = load_model(tiny_model, "cpu", "fp32")
    enc = PromptEncoder(ByteTokenizer())
    prompts = [enc.encode("The value for key x is: 1234567. " * k) for k in (3, 7, 11)]
    alone = [generate_batch(model, enc, [p], 9)[0] for p in prompts]
    batched = generate_batch(model, enc, prompts, 9)
    assert [g.text for g in batched] == [g.text for g in alone]
    assert all(g.output_tokens == 9 for g in batched)


class _Scripted:
    """Stands in for a model: ``generate`` appends a fixed continuation to every row (pads after a stop)."""

    def __init__(self, continuations):
        self.continuations = continuations
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def parameters(self):
        return iter([self.weight])

    def generate(self, input_ids, attention_mask, generation_config, stopping_criteria):
        width = max(len(c) for c in self.continuations)
        tail = torch.full((len(self.continuations), width), generation_config.pad_token_id)
        for i, c in enumerate(self.continuations):
            tail[i, :len(c)] = torch.tensor(c)
        return torch.cat([input_ids, tail], dim=1)


def test_generation_cuts_at_the_stop_string_and_counts_tokens():
    from leanformer.data import ByteTokenizer

    tok = ByteTokenizer()
    enc = PromptEncoder(tok)
    model = _Scripted([tok.encode("42</answer> and more"), tok.encode("7, 8") + [tok.eos_id, 65], tok.encode("x")])
    out = generate_batch(model, enc, [[65, 66], [67], [68, 69, 70]], 20)
    assert [g.text for g in out] == ["<answer>42</answer>", "<answer>7, 8", "<answer>x"]
    assert [g.output_tokens for g in out] == [len("42</answer>"), len("7, 8") + 1, 1]


def test_sparse_cells_record_measured_sparsity_and_flops(tiny_model, tmp_path):
    from leanformer.eval.models import method_names

    prefill_ok, decode_ok = method_names()
    if "vertical_slash" not in prefill_ok or "quest" not in decode_ok:
        pytest.skip("leanformer.sparse does not provide vertical_slash and quest yet")
    c = _config(tiny_model, tmp_path / "r.db", tasks=["niah"], samples=2, prefill=["vertical_slash"],
                decode=["quest"], sparsities=[0.5], max_new_tokens=4, task_params={})
    assert harness.run_sweep(c)["added"] == 3 * 2
    with ResultsStore(c.store) as store:
        rows = {(r["prefill_method"], r["decode_method"], r["sample"]): r for r in store.rows()}
    for i in range(2):
        dense, pre, dec = (rows[("dense", "dense", i)], rows[("vertical_slash", "dense", i)],
                           rows[("dense", "quest", i)])
        assert dense["sparsity"] == 0.0 and pre["sparsity"] == dec["sparsity"] == 0.5
        assert pre["decode_sparsity"] == 0.0 and abs(pre["prefill_sparsity"] - 0.5) < 0.05
        assert dec["prefill_sparsity"] == 0.0 and abs(dec["decode_sparsity"] - 0.5) < 0.05
        # Same sample everywhere (pairing by seed); skipped work shows in the FLOPs of the sparse phase only.
        assert dense["seed"] == pre["seed"] == dec["seed"] and dense["answer"] == pre["answer"]
        if dense["prefill_flops"] is not None:
            assert pre["prefill_flops"] < dense["prefill_flops"] and dec["decode_flops"] < dense["decode_flops"]


def test_the_packaged_reference_checkpoint_runs_by_name(tmp_path, monkeypatch):
    """``leanformer:reference`` is the checkpoint shipped in the package: a sweep loads it from the install and the
    store names it by that name (reports then say "reference", not an install path); a missing one is a clear error."""
    from leanformer.eval import models

    path = models.resolve_spec("leanformer:reference")
    assert path.endswith("assets/reference") and models.resolve_spec("some/hub-model") == "some/hub-model"
    shipped = json.loads((Path(path) / "model.json").read_text())["config"]["max_seq_len"]
    assert models.context_length("leanformer:reference") == shipped >= 8192 + 128  # 8K prompts and their answers
    c = harness.load_config({"models": ["leanformer:reference"], "tasks": ["niah"], "lengths": [300], "samples": 1,
                             "max_new_tokens": 4, "device": "cpu", "progress": False,
                             "store": str(tmp_path / "r.db")})
    harness.run_sweep(c)
    with ResultsStore(c.store) as store:
        assert [r["model"] for r in store.rows()] == ["leanformer:reference"]
    monkeypatch.setitem(models.PACKAGED, "leanformer:reference", "assets/nothing-here")
    with pytest.raises(UserError, match="leanformer:reference.*ships no weights"):
        models.resolve_spec("leanformer:reference")


def test_fingerprint_follows_weights_not_cards_and_a_changed_checkpoint_is_not_resumed(tiny_model, tmp_path):
    import shutil

    from leanformer.eval.models import model_fingerprint

    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    fp = model_fingerprint(str(model))
    assert fp.startswith("sha256:") and fp == model_fingerprint(str(model))
    (model / "README.md").write_text("a new card")
    (model / "training.json").write_text("{}")
    assert model_fingerprint(str(model)) == fp
    assert model_fingerprint("org/not-a-local-dir") == "name:org/not-a-local-dir"
    c = _config(str(model), tmp_path / "r.db", tasks=["niah"], samples=1, task_params={})
    assert harness.run_sweep(c)["added"] == 1
    weights = next(model.glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one bit of one weight
    weights.write_bytes(bytes(data))
    assert model_fingerprint(str(model)) != fp
    with pytest.raises(UserError, match="from checkpoint sha256:.*resuming would mix the two"):
        harness.run_sweep(c)


def test_batched_sparse_cells_equal_batch_one_and_the_generate_path(tiny_model, tmp_path):
    """Sparse cells run batched through the engine (prompts of unequal length, no padding): every sample's output
    and measured sparsity equal its batch-1 run, and the outputs equal transformers' generate path."""
    common = dict(tasks=["niah"], samples=3, prefill=["block_topk"], decode=["snapkv", "quest"], sparsities=[0.7],
                  max_new_tokens=5, task_params={}, method_params={"block_topk": {"block_size": 16},
                                                                   "snapkv": {"window": 16, "kernel": 5, "local": 8}})
    outs = {}
    for name, kw in {"batched": {"batch_size": 3}, "single": {"batch_size": 1},
                     "generate": {"batch_size": 3, "engine": "off"}}.items():
        c = _config(tiny_model, tmp_path / f"{name}.db", **common, **kw)
        harness.run_sweep(c)
        with ResultsStore(c.store) as store:
            outs[name] = {(r["prefill_method"], r["decode_method"], r["sample"]):
                          (r["output"], r["prompt_tokens"], r["prefill_sparsity"], r["decode_sparsity"])
                          for r in store.rows()}
    assert len(outs["batched"]) == 4 * 3 and len({v[1] for v in outs["batched"].values()}) > 1  # unequal lengths
    assert outs["batched"] == outs["single"]
    assert {k: v[0] for k, v in outs["batched"].items()} == {k: v[0] for k, v in outs["generate"].items()}


def test_prompt_workers_make_the_samples_this_process_would(tiny_model, tmp_path):
    """``prompt_workers``: the samples and prompts made ahead by worker processes are the ones the sweep makes itself:
    every row (prompt length, output, answer) equal, across cells that share their samples."""
    common = dict(tasks=["niah", "variable_tracking"], samples=2, decode=["snapkv"], sparsities=[0.5],
                  max_new_tokens=3, method_params={"snapkv": {"window": 16, "kernel": 5, "local": 8}})
    rows = {}
    for workers in (0, 2):
        c = _config(tiny_model, tmp_path / f"w{workers}.db", **common, prompt_workers=workers)
        assert harness.run_sweep(c)["added"] == 2 * 2 * 2
        with ResultsStore(c.store) as store:
            rows[workers] = {(r["cell_key"], r["sample"]): (r["prompt_tokens"], r["output"], r["answer"])
                             for r in store.rows()}
    assert rows[0] == rows[2] and len(rows[0]) == 8


def test_a_prefill_methods_dense_layers_are_a_cell_of_their_own(tiny_model, tmp_path):
    """``method_params: {vertical_slash: {dense_layers: [...]}}``: a cell apart from the method without it (its
    own rows in the store), with every layer dense the dense cell's outputs, and the measured sparsity counts the
    dense layers."""
    c = _config(tiny_model, tmp_path / "r.db", tasks=["niah"], samples=2, prefill=["vertical_slash"], decode=[],
                sparsities=[0.6], max_new_tokens=4, task_params={}, batch_size=2,
                method_params={"vertical_slash": {"block_size": 16, "dense_layers": [0, 1]}})
    harness.run_sweep(c)
    one = _config(tiny_model, tmp_path / "r.db", tasks=["niah"], samples=2, prefill=["vertical_slash"], decode=[],
                  sparsities=[0.6], max_new_tokens=4, task_params={}, batch_size=2,
                  method_params={"vertical_slash": {"block_size": 16, "dense_layers": [1]}})
    assert harness.run_sweep(one)["added"] == 2  # the dense cell is done; the new setting is a new cell
    with ResultsStore(c.store) as store:
        rows = store.rows()
    dense = [r for r in rows if r["prefill_method"] == "dense"]
    every = [r for r in rows if json.loads(r["params"])["prefill"].get("dense_layers") == [0, 1]]
    second = [r for r in rows if json.loads(r["params"])["prefill"].get("dense_layers") == [1]]
    assert len(every) == len(second) == 2
    assert sorted(r["output"] for r in every) == sorted(r["output"] for r in dense)
    assert all(r["prefill_sparsity"] == 0.0 for r in every)
    assert all(0.1 < r["prefill_sparsity"] < 0.45 for r in second)  # one layer of two sparse at ~0.6
