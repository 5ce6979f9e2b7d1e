"""`leanformer analyze` end to end on a small synthetic store with known structure."""

import csv
import re
import subprocess
import sys

import numpy as np
import pytest

from leanformer.analysis import report, store
from leanformer.analysis.synthetic import write_synthetic_store
from leanformer.cli import main


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    path = tmp_path_factory.mktemp("store") / "results.db"
    write_synthetic_store(path, models=("qwen2.5-0.5b", "qwen2.5-3b", "qwen2.5-7b"), tasks=("qa", "cwe"),
                          lengths=(16384, 65536), methods=("vertical_slash", "block_topk", "quest"),
                          sparsities=(0.5, 0.8, 0.95), n=24)
    return path


def edited_copy(db, path, sql: str):
    """A copy of the store at ``path`` with ``sql`` applied to it."""
    import shutil
    import sqlite3

    shutil.copy(db, path)
    con = sqlite3.connect(path)
    con.execute(sql)
    con.commit()
    con.close()
    return path


def test_cli_writes_report_with_existing_figures_and_tables(db, tmp_path, capsys):
    out = tmp_path / "rep"
    assert main(["analyze", str(db), "--out", str(out), "--n-boot", "200"]) == 0
    assert "report.md" in capsys.readouterr().out
    md = (out / "report.md").read_text()
    figures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert {"accuracy_prefill.png", "accuracy_decode.png", "isocost_prefill.png", "safe_decode.png",
            "scaling_fit.png", "budget_growth.png"} <= set(figures)
    for name in figures:
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    for section in ("## Findings against the Sparse Frontier", "## Cost accounting", "## Iso-cost frontiers",
                    "## Accuracy preservation", "## Scaling laws",
                    "## Budget vs length", "qwen2.5-72b"):
        assert section in md
    rows = list(csv.DictReader((out / "safe_sparsity.csv").open()))
    assert len(rows) == 3 * 2 * 2 * 3  # models x tasks x lengths x methods


def test_safe_sparsity_reflects_the_planted_drops(db):
    cells = store.group_cells(store.load_rows(db))
    rows = report.preservation(cells, report.ReportOptions(n_boot=300))
    # cwe loses ~4 logits at 0.95 for block_topk (tolerance ln CR 1.0): never safe there, wherever the dense
    # accuracy leaves room to see a drop in 24 samples.
    cwe = [r for r in rows if r["task"] == "cwe" and r["method"] == "block_topk" and r["dense_acc"] >= 0.4]
    assert len(cwe) >= 3 and all(r["safe"] < 0.95 for r in cwe)
    # qa with quest (tolerance ln CR 2.2 > ln 20 at 64K): no drop planted, so 0.95 is safe in most cells.
    qa = [r["safe"] for r in rows if r["task"] == "qa" and r["method"] == "quest"]
    assert np.mean(np.array(qa) == 0.95) >= 0.5


def test_scaling_fit_on_store_has_the_planted_signs(db):
    cells = store.group_cells(store.load_rows(db))
    res, _ = report.scaling_results(cells, report.ReportOptions())
    for method in ("vertical_slash", "block_topk"):
        d = res[method]["fit"].as_dict()
        assert d["ln N"][1] > 0  # bigger models are better (CI above 0)
        assert d["ln CR"][2] < 0  # more compression hurts (CI below 0)
        assert res[method]["model_params"]["n_test"] > 0


def test_cli_errors_are_one_line_user_errors(db, tmp_path, capsys):
    assert main(["analyze", str(tmp_path / "none.db"), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["analyze", str(db), "--out", str(tmp_path / "o"), "--synthetic"]) == 2
    assert main(["analyze", str(db), "--out", str(tmp_path / "o"), "--length", "7"]) == 2
    assert "16384" in capsys.readouterr().err


def test_cli_module_imports_nothing_heavy():
    code = ("import sys, leanformer.analysis.cli, leanformer.analysis.flops; "
            "print([m for m in ('torch', 'matplotlib', 'numpy', 'scipy') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_cli_options_reach_the_report_and_both_phase_is_handled(db, tmp_path):
    import shutil
    import sqlite3

    both = tmp_path / "both.db"
    shutil.copy(db, both)
    with sqlite3.connect(both) as con:
        # Rows with both phases sparse (and no stored model size: the preset's count is used).
        con.execute("INSERT INTO results SELECT cell_key || 'b', sample, model, NULL, 'vertical_slash', 'quest', "
                    "sparsity, prefill_sparsity, 0.9, task, length, seed, prompt_tokens, output_tokens, output, "
                    "answer, score, prefill_flops, decode_flops, time_s, params, created_at FROM results "
                    "WHERE prefill_method = 'vertical_slash'")
    cells = store.group_cells(store.load_rows(both))
    mixed = [c for c in cells if c.phase == "both"]
    assert mixed and {c.method for c in mixed} == {"vertical_slash+quest"}
    assert all(c.model_params > 1e8 for c in mixed)
    out = tmp_path / "rep"
    assert main(["analyze", str(both), "--out", str(out), "--n-boot", "200", "--test", "sign", "--correction",
                 "fixed_sequence", "--framing", "noninferiority", "--margin", "0.1", "--interactions", "--target",
                 "log_error", "--cost", "total", "--length", "16384"]) == 0
    md = (out / "report.md").read_text()
    assert "sign test, framing `noninferiority`, α = 0.05, margin = 0.1, fixed_sequence correction" in md
    assert "log_error = β0 + ln N + ln L + ln CR + ln N·ln CR + ln L·ln CR" in md
    assert "length **16,384**" in md and "Cost = mean total FLOPs" in md
    assert (out / "accuracy_both.png").exists() and (out / "isocost_both.png").exists()


def test_groups_at_the_floor_are_left_out_of_the_preservation_test(db, tmp_path):
    """A (model, task, length) group whose dense accuracy is ~0 cannot show a drop: every sparsity would pass and
    look safe. The report names it and leaves it out; --min-dense 0 keeps it."""
    floored = edited_copy(db, tmp_path / "floored.db", "UPDATE results SET score = 0 "
                          "WHERE task = 'qa' AND length = 65536 AND model = 'qwen2.5-0.5b'")
    cells = store.group_cells(store.load_rows(floored))
    assert set(report.floor_groups(store.dense_baselines(cells), 0.1)) == {("qwen2.5-0.5b", "qa", 65536)}
    for min_dense, kept in ((0.1, False), (0.0, True)):
        out = tmp_path / f"rep{min_dense}"
        assert main(["analyze", str(floored), "--out", str(out), "--n-boot", "200", "--min-dense", str(min_dense)]) == 0
        rows = list(csv.DictReader((out / "safe_sparsity.csv").open()))
        hit = [r for r in rows if (r["model"], r["task"], r["length"]) == ("qwen2.5-0.5b", "qa", "65536")]
        assert bool(hit) == kept
        if kept:  # the artefact the option removes: with nothing to lose, every method looks safe at 0.95
            assert all(float(r["safe"]) == 0.95 for r in hit)
        assert ("**At the floor**: 1 of 12" in (out / "report.md").read_text()) != kept
        assert len(rows) == 3 * 2 * 2 * 3 - (0 if kept else 3)
        summary = list(csv.DictReader((out / "cells.csv").open()))  # every cell, floored or not, marked
        assert len(summary) == len(cells)
        marked = {(r["model"], r["task"], r["length"]) for r in summary if r["dense_at_floor"] == "True"}
        assert marked == (set() if kept else {("qwen2.5-0.5b", "qa", "65536")})
        dense = next(r for r in summary if (r["model"], r["task"], r["length"], r["phase"]) ==
                     ("qwen2.5-0.5b", "qa", "65536", "dense"))
        assert float(dense["accuracy"]) == 0.0 and int(dense["n"]) == 24
    assert main(["analyze", str(floored), "--out", str(tmp_path / "bad"), "--min-dense", "1.5"]) == 2


def test_two_settings_of_one_method_are_two_methods_in_the_analysis(db, tmp_path):
    """Rows of one method run with different parameters (here ``dense_layers``) are not merged into one cell: the
    analysis names each variant by the settings that differ, and a setting every row shares adds nothing."""
    import json
    import shutil
    import sqlite3

    path = tmp_path / "variants.db"
    shutil.copy(db, path)
    con = sqlite3.connect(path)
    con.execute("""UPDATE results SET params = '{"prefill": {"block_size": 64}, "decode": {}}'""")
    cols = [d[1] for d in con.execute("PRAGMA table_info(results)")]
    rows = con.execute("SELECT * FROM results WHERE prefill_method = 'vertical_slash'").fetchall()
    variant = json.dumps({"prefill": {"block_size": 64, "dense_layers": [0]}, "decode": {}})
    for r in rows:
        r = dict(zip(cols, r))
        r.update(cell_key=r["cell_key"] + "-dense0", params=variant, score=0.0)
        con.execute(f"INSERT INTO results ({', '.join(r)}) VALUES ({', '.join('?' * len(r))})", list(r.values()))
    con.commit()
    con.close()
    cells = store.group_cells(store.load_rows(path))
    methods = {c.method for c in cells if c.phase == "prefill"}
    assert methods == {"vertical_slash", "vertical_slash[dense_layers=[0]]", "block_topk"}
    plain = next(c for c in cells if c.method == "vertical_slash" and c.sparsity == 0.5)
    assert plain.accuracy > 0  # not averaged with the zero-score variant
    assert all(c.accuracy == 0 for c in cells if c.method == "vertical_slash[dense_layers=[0]]")
    out = tmp_path / "rep"
    assert main(["analyze", str(path), "--out", str(out), "--n-boot", "200"]) == 0
    assert "vertical_slash[dense_layers=[0]]" in (out / "safe_sparsity.csv").read_text()
    # --methods: the plain method alone, by the name the report gives it (the variant is left out)
    assert main(["analyze", str(path), "--out", str(tmp_path / "plain"), "--n-boot", "200",
                 "--methods", "vertical_slash", "quest"]) == 0
    kept = {r["method"] for r in csv.DictReader((tmp_path / "plain" / "cells.csv").open())}
    assert kept == {"dense", "vertical_slash", "quest"}
    assert main(["analyze", str(path), "--out", str(tmp_path / "bad"), "--methods", "vertical_slash", "nope"]) == 2
    assert not (tmp_path / "bad" / "report.md").exists()


def test_models_option_keeps_the_named_models_only(db, tmp_path):
    """--models: the report on one model's cells (no iso-cost comparison is left); a name the store lacks is
    refused before anything is written."""
    out = tmp_path / "one"
    assert main(["analyze", str(db), "--out", str(out), "--n-boot", "200", "--models", "qwen2.5-3b"]) == 0
    assert {r["model"] for r in csv.DictReader((out / "cells.csv").open())} == {"qwen2.5-3b"}
    assert "no iso-cost comparison" in (out / "report.md").read_text()
    assert main(["analyze", str(db), "--out", str(tmp_path / "bad"), "--models", "qwen2.5-3b", "nope"]) == 2
    assert not (tmp_path / "bad" / "report.md").exists()


def test_requested_and_measured_sparsity_apart_are_named(db, tmp_path):
    """A method whose measured sparsity falls short of the request (one that leaves a layer dense) is named in the
    report with its measured level, since the findings compare methods at the requested one; methods that meet the
    request are not."""
    path = edited_copy(db, tmp_path / "short.db",
                       "UPDATE results SET prefill_sparsity = sparsity * 0.875 WHERE prefill_method = 'vertical_slash'")
    cells = store.group_cells(store.load_rows(path))
    gaps = report.sparsity_gaps(cells)
    assert set(gaps) == {("prefill", "vertical_slash")}
    got = gaps[("prefill", "vertical_slash")]
    assert [r for r, _ in got] == [0.5, 0.8, 0.95]
    assert [m for _, m in got] == pytest.approx([0.4375, 0.7, 0.83125])
    out = tmp_path / "rep"
    assert main(["analyze", str(path), "--out", str(out), "--n-boot", "200"]) == 0
    md = (out / "report.md").read_text()
    assert "vertical_slash (prefill) 0.5 → 0.44, 0.8 → 0.70, 0.95 → 0.83" in md
    assert main(["analyze", str(db), "--out", str(tmp_path / "plain"), "--n-boot", "200"]) == 0
    assert "Requested and measured sparsity differ" not in (tmp_path / "plain" / "report.md").read_text()
