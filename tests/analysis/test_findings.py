"""The report's answers to the Sparse Frontier's claims, on hand-made rows and on a synthetic store whose planted
tolerances fix the answers."""

import numpy as np
import pytest

from leanformer.analysis import findings, report, store
from leanformer.analysis.store import Cell
from leanformer.analysis.synthetic import write_synthetic_store


def _pres(model, task, length, phase, method, safe):
    return {"model": model, "task": task, "length": length, "phase": phase, "method": method, "safe": safe}


def test_decode_vs_prefill_counts_cells_and_tests_their_signs():
    rows = []
    for i in range(8):  # decode ahead in 7 cells, behind in 1; one more cell has a single phase (not counted)
        dec, pre = (0.9, 0.5) if i < 7 else (0.5, 0.8)
        rows += [_pres("m", f"t{i}", 4096, "decode", m, dec) for m in ("quest", "snapkv")]
        rows.append(_pres("m", f"t{i}", 4096, "prefill", "block_topk", pre))
    rows.append(_pres("m", "lonely", 4096, "decode", "quest", 0.95))
    d = findings.decode_vs_prefill(rows)
    assert (d["n"], d["decode_higher"], d["decode_lower"]) == (8, 7, 1)
    assert d["p"] == pytest.approx(0.0703125)  # two-sided binomial: 2 * (1 + 8) / 2**8
    assert d["decode_mean"] == pytest.approx((7 * 0.9 + 0.5) / 8)


def test_safe_table_lists_every_method_at_the_largest_safe_sparsity():
    rows = [_pres("m", "qa", 4096, "prefill", m, s) for m, s in
            (("vertical_slash", 0.9), ("block_topk", 0.9), ("flexprefill", 0.5))]
    rows.append(_pres("m", "qa", 4096, "decode", "quest", 0.0))
    out = {r["phase"]: r for r in findings.safe_table(rows)}
    assert out["prefill"]["safe"] == 0.9 and out["prefill"]["methods"] == ["block_topk", "vertical_slash"]
    assert out["decode"]["methods"] == ["quest"] and out["decode"]["safe"] == 0.0


def _cell(method, sparsity, scores, task="qa"):
    return Cell(model="m", model_params=1e9, task=task, length=4096, phase="prefill", method=method,
                sparsity=sparsity, scores=dict(enumerate(scores)), measured_sparsity=sparsity, prefill_flops=1.0,
                decode_flops=1.0)


def test_best_methods_needs_a_method_as_good_as_the_best_in_every_group():
    rng = np.random.default_rng(0)
    good = rng.random(40)
    cells = [_cell("a", s, good) for s in (0.5, 0.9)]
    cells += [_cell("b", 0.5, good), _cell("b", 0.9, good * 0.2)]  # b ties a at 0.5, collapses at 0.9
    b = findings.best_methods(cells, n_boot=300)["prefill"]
    assert b["groups"] == 2 and b["best_everywhere"] == ["a"]
    assert b["as_good"] == {"a": 2, "b": 1} and b["wins"]["a"] >= 1


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """Planted tolerances (ln CR below which nothing is lost): quest 2.2 > vertical_slash 1.6 > block_topk 1.0."""
    path = tmp_path_factory.mktemp("findings") / "results.db"
    write_synthetic_store(path, models=("qwen2.5-0.5b", "qwen2.5-3b"), tasks=("cwe", "niah", "vt"),
                          lengths=(16384, 65536), methods=("vertical_slash", "block_topk", "quest"),
                          sparsities=(0.5, 0.8, 0.95), n=24)
    return store.group_cells(store.load_rows(path))


def test_findings_on_a_store_with_planted_tolerances(planted):
    o = report.ReportOptions(n_boot=300)
    pres = report.preservation(planted, o)
    d = findings.decode_vs_prefill(pres)
    assert d["decode_mean"] > d["prefill_mean"] and d["decode_higher"] > d["decode_lower"]
    best = findings.best_methods(planted, n_boot=300)
    assert "block_topk" not in best["prefill"]["best_everywhere"]
    assert best["prefill"]["wins"]["vertical_slash"] > best["prefill"]["wins"]["block_topk"]
    md = "\n".join(findings.section(planted, pres, [], {}, n_boot=300))
    for n in range(1, 6):
        assert f"\n{n}. **" in md
    assert "decoding tolerates more" in md and "no iso-cost comparison" in md


def test_iso_cost_comparisons_with_a_model_at_the_floor_are_set_aside():
    """Claim 4 counts verdicts only where both models do the task: a smaller model at the floor (it cannot do the
    task at all) makes "larger sparse better" a statement about training, not sparsity, so it is counted apart."""
    def row(verdict, small_floor=False, large_floor=False, phase="prefill"):
        return {"phase": phase, "verdict": verdict, "small_at_floor": small_floor, "large_at_floor": large_floor}

    rows = [row("larger sparse better"), row("smaller dense better"), row("larger sparse better", small_floor=True),
            row("tie", large_floor=True), row("tie", phase="decode")]
    counts, aside = findings.iso_summary(rows)
    assert counts == {"prefill": {"larger sparse better": 1, "smaller dense better": 1}, "decode": {"tie": 1}}
    assert aside == 2
    md = "\n".join(findings.section([], [], rows, {}, n_boot=50))
    assert "prefill: larger sparse better 1, smaller dense better 1" in md and "2 comparisons set aside" in md
