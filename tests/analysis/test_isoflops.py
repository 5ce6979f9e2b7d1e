"""Iso-cost analysis: Pareto frontier, larger-sparse vs smaller-dense verdicts, cost kinds; the store reader."""

import sqlite3

import numpy as np
import pytest

from leanformer.analysis import isoflops, store
from leanformer.analysis.store import Cell
from leanformer.errors import UserError


def cell(model, params, phase, sparsity, acc, prefill, decode=1.0, n=40, method=None, seed=42):
    rng = np.random.default_rng(seed)
    scores = (rng.random(n) < acc).astype(float) if 0 < acc < 1 else np.full(n, acc)
    return Cell(model=model, model_params=params, task="niah", length=1001, phase=phase,
                method=method or ("dense" if phase == "dense" else "vertical_slash"), sparsity=sparsity,
                scores=dict(enumerate(scores)), measured_sparsity=sparsity, prefill_flops=prefill,
                decode_flops=decode)


def test_pareto_keeps_only_undominated_points():
    cells = [cell("a", 1, "dense", 0, 0.5, 100), cell("a", 1, "prefill", 0.9, 0.3, 40),
             cell("b", 2, "dense", 0, 0.9, 400), cell("b", 2, "prefill", 0.9, 0.6, 90),
             cell("b", 2, "prefill", 0.5, 0.45, 200)]
    pts = isoflops.points(cells, "niah", 1001, "prefill")
    front = isoflops.pareto(pts)
    assert [(p.cost, p.cell.model) for p in front] == [(40, "a"), (90, "b"), (400, "b")]
    # every point off the frontier is dominated by a frontier point no more expensive and at least as accurate
    for p in pts:
        assert any(f.cost <= p.cost and f.accuracy >= p.accuracy for f in front)


def test_iso_cost_verdicts():
    small = cell("small", 1e9, "dense", 0, 0.5, 100, seed=1)
    large_dense = cell("large", 3e9, "dense", 0, 0.9, 300, seed=2)
    better = cell("large", 3e9, "prefill", 0.9, 1.0, 95)
    too_expensive = cell("large", 3e9, "prefill", 0.5, 1.0, 180)
    res = isoflops.iso_cost([small, large_dense, better, too_expensive], "prefill", n_boot=500)
    assert len(res) == 1
    r = res[0]
    assert r.large is better and r.large_cost == 95 and r.verdict == "larger sparse better"
    assert r.delta == pytest.approx(1.0 - small.accuracy) and r.ci_low > 0

    worse = cell("large", 3e9, "prefill", 0.9, 0.0, 95)
    assert isoflops.iso_cost([small, large_dense, worse], "prefill", n_boot=500)[0].verdict == "smaller dense better"
    none = isoflops.iso_cost([small, large_dense, too_expensive], "prefill", n_boot=500)[0]
    assert none.large is None and none.large_model == "large" and none.verdict == "no sparse point fits"
    slack = isoflops.iso_cost([small, large_dense, too_expensive], "prefill", slack=2.0, n_boot=500)[0]
    assert slack.large is too_expensive


def test_cost_kinds():
    c = cell("a", 1, "decode", 0.9, 0.5, prefill=100, decode=7, method="quest")
    assert isoflops.cost_kind("decode") == "decode" and isoflops.cost_kind("both") == "total"
    assert c.cost("phase") == 7 and c.cost("prefill") == 100 and c.cost("total") == 107
    dense = cell("a", 1, "dense", 0, 0.5, prefill=100, decode=9)
    assert [p.cost for p in isoflops.points([dense, c], "niah", 1001, "decode")] == [9, 7]
    with pytest.raises(UserError, match="phase, prefill"):
        c.cost("wall")


def test_phase_and_method_of_a_row():
    assert store.phase_of("dense", "dense") == "dense"
    assert store.phase_of("vertical_slash", "dense") == "prefill"
    assert store.phase_of("dense", "quest") == "decode"
    assert store.method_of("block_topk", "snapkv") == "block_topk+snapkv"


def test_store_groups_pairs_and_errors(tmp_path):
    from leanformer.analysis.synthetic import write_synthetic_store

    db = tmp_path / "r.db"
    n_rows = write_synthetic_store(db, models=("qwen2.5-0.5b",), tasks=("qa",), lengths=(1001,),
                                   methods=("quest", "vertical_slash"), sparsities=(0.5, 0.9), n=7)
    assert n_rows == 5 * 7
    with sqlite3.connect(db) as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    cells = store.group_cells(store.load_rows(db))
    assert sorted((c.phase, c.method, c.sparsity) for c in cells) == [
        ("decode", "quest", 0.5), ("decode", "quest", 0.9), ("dense", "dense", 0.0),
        ("prefill", "vertical_slash", 0.5), ("prefill", "vertical_slash", 0.9)]
    base = store.dense_baselines(cells)[("qwen2.5-0.5b", "qa", 1001)]
    sparse = next(c for c in cells if c.method == "quest" and c.sparsity == 0.9)
    d, s = store.paired_scores(base, sparse)
    assert d.shape == s.shape == (7,)
    assert sparse.measured_sparsity == pytest.approx(0.9, abs=0.01)
    assert sparse.decode_flops < base.decode_flops and sparse.prefill_flops > base.prefill_flops  # page metadata
    with pytest.raises(UserError, match="does not exist"):
        store.load_rows(tmp_path / "missing.db")
    (tmp_path / "junk.db").write_text("not sqlite")
    with pytest.raises(UserError, match="not a readable"):
        store.load_rows(tmp_path / "junk.db")
