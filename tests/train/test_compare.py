import json

import pytest

from leanformer.cli import main
from leanformer.errors import UserError
from leanformer.train.compare import parse_budget, parse_sets


def test_parse_budget_and_sets():
    assert parse_budget("10m") == 600 and parse_budget("1.5h") == 5400 and parse_budget("90") == 90
    with pytest.raises(UserError, match="--budget 'ten' is not a positive duration"):
        parse_budget("ten")
    sets = parse_sets(["lion:optim.lr=1e-3", "stacking:schedule=[0.2, 0.5]"], ["lion", "stacking"])
    assert sets == {"lion": (["optim.lr=1e-3"], {}), "stacking": ([], {"schedule": [0.2, 0.5]})}
    with pytest.raises(UserError, match="--set 'rho:x=1'"):
        parse_sets(["rho:x=1"], ["lion"])


def test_compare_table_plot_and_resume(tmp_path, capsys, ntng):
    PRESET, MODEL, RUN = ntng.PRESET, ntng.MODEL, ntng.RUN
    tiny_cfg, synthetic_table = ntng.tiny_cfg, ntng.synthetic_table
    table = tmp_path / "rst.json"
    synthetic_table(tiny_cfg()).save(table)  # 0.46 RST seconds per full step
    args = ["compare", str(PRESET), *MODEL["gpt"], *RUN, "--budget", "2.3s", "--methods", "baseline,stacking,lion",
            "--seeds", "2", "--out", str(tmp_path / "cmp"), "--rst-table", str(table), "--evals", "2"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert out.count("leanformer: compare") == 6 and "| stacking | 2 |" in out
    summary = json.loads((tmp_path / "cmp" / "compare_summary.json").read_text())
    rows = {r["method"]: r for r in summary["rows"]}
    assert rows["baseline"]["steps"] == 5 and rows["stacking"]["steps"] > 5  # shallow steps are cheaper
    assert rows["lion"]["diff"] == pytest.approx(rows["lion"]["mean"] - rows["baseline"]["mean"])
    assert rows["lion"]["significant"] in (True, False) and 0 <= rows["lion"]["p"] <= 1
    assert all(len(c) == 3 and c[-1][0] >= 2.3 for c in summary["curves"]["baseline"])  # evals at steps 2, 4, 5
    assert (tmp_path / "cmp" / "compare.png").stat().st_size > 1000
    (tmp_path / "cmp" / "lion" / "seed1" / "result.json").unlink()  # as if killed after its last checkpoint
    assert main(args) == 0
    out = capsys.readouterr().out
    assert out.count("leanformer: compare") == 1 and "resuming" in out
    again = json.loads((tmp_path / "cmp" / "compare_summary.json").read_text())
    assert again["rows"] == summary["rows"]
    with pytest.raises(UserError, match="holds a comparison with another config or budget"):
        from leanformer.train.compare import run_compare

        run_compare(str(PRESET), MODEL["gpt"] + RUN, 5.0, ["baseline"], 1, tmp_path / "cmp", str(table))


def test_compare_runs_the_masked_lm_encoder(tmp_path, capsys, ntng):
    ROOT, MODEL, RUN, tiny_cfg, synthetic_table = ntng.ROOT, ntng.MODEL, ntng.RUN, ntng.tiny_cfg, ntng.synthetic_table
    preset = ROOT / "configs" / "bert-shakespeare.yaml"
    table = tmp_path / "rst.json"
    synthetic_table(tiny_cfg(preset=preset)).save(table)
    assert main(["compare", str(preset), *MODEL["bert"], *RUN, "--budget", "1.5", "--methods",
                 "baseline,rho,sophia", "--seeds", "1", "--out", str(tmp_path / "cmp"), "--rst-table", str(table),
                 "--set", "rho:il_steps=2", "--set", "sophia:optim.hessian_every=1"]) == 0
    rows = json.loads((tmp_path / "cmp" / "compare_summary.json").read_text())["rows"]
    assert [r["method"] for r in rows] == ["baseline", "rho", "sophia"]
    assert rows[1]["steps"] < rows[0]["steps"]  # RHO pays for its selection forwards and the IL model
