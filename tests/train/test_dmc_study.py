import json

import numpy as np
import pytest

from leanformer.config import DataConfig
from leanformer.models.gpt import GPTConfig
from leanformer.train import dmc_study_report as report
from leanformer.train.dmc_study import Stage, StudyConfig, load_evals, plan, run


def test_plan_runs_the_base_first_then_whole_seeds_then_controls():
    names = [s.name for s in plan((2, 4), (0, 1))]
    assert names == ["base", "dmc-cr2-s0", "gqa-cr2-s0", "dmc-cr4-s0", "gqa-cr4-s0", "dmc-cr2-s1", "gqa-cr2-s1",
                     "dmc-cr4-s1", "gqa-cr4-s1", "control-s0", "control-s1"]
    assert Stage("control", 1, 3).name == "control-s3" and "control-s0" not in [s.name for s in plan((2,), (0,), False)]


def fake_evals(rng, shift: dict[str, float], windows: int = 400) -> dict:
    nbytes = rng.integers(200, 257, windows).astype(float)
    base = rng.gamma(4.0, 0.45, windows) * nbytes / 2  # ~1.8 bits per byte with scene-to-scene variation
    out = {}
    for name, delta in shift.items():
        bits = base + delta * nbytes + rng.normal(0, 2, windows)
        out[name] = {"bits": bits.tolist(), "bytes": nbytes.tolist()}
        if name.startswith("dmc"):
            out[name]["compression_ratio"] = 3.5
    return out


def test_summary_intervals_and_paired_difference():
    rng = np.random.default_rng(0)
    evals = fake_evals(rng, {"base": 0.0, "dmc-cr4-s0": 0.06, "dmc-cr4-s1": 0.05, "gqa-cr4-s0": 0.02,
                             "gqa-cr4-s1": 0.02, "control-s0": 0.01})
    rows = {r["method"]: r for r in report.summarize(evals, [4, 8])}
    assert set(rows) == {"base", "dmc", "gqa", "control"}  # CR 8 has no runs: no row
    dmc, gqa = rows["dmc"], rows["gqa"]
    assert dmc["ci95"][0] < dmc["bits_per_byte"] < dmc["ci95"][1]
    assert dmc["cr_reached"] == pytest.approx(3.5) and gqa["cr_reached"] == 4
    # the shared text variation cancels in the paired difference: its interval is far narrower than either CI
    assert 0.025 < dmc["dmc_minus_gqa_ci95"][0] < dmc["dmc_minus_gqa"] < dmc["dmc_minus_gqa_ci95"][1] < 0.045
    assert np.ptp(dmc["dmc_minus_gqa_ci95"]) < 0.5 * np.ptp(dmc["ci95"])
    assert np.ptp(dmc["vs_base_ci95"]) < 0.5 * np.ptp(dmc["ci95"])  # paired with the one-seed base too
    assert dmc["p_dmc_better"] == 0.0 and dmc["vs_base"] == pytest.approx(0.055, abs=0.005)
    assert "| dmc | 4 | 3.50 |" in report.table(list(rows.values()))


def test_seed_spread_widens_the_interval():
    rng = np.random.default_rng(1)
    bits = rng.gamma(4.0, 0.45, (1, 300)) * 128
    nbytes = np.full(300, 256.0)
    same = report.hierarchical_bootstrap(np.concatenate([bits, bits]), nbytes)
    apart = report.hierarchical_bootstrap(np.concatenate([bits, bits + 0.2 * 256]), nbytes)
    assert np.ptp(np.percentile(apart, [2.5, 97.5])) > 1.5 * np.ptp(np.percentile(same, [2.5, 97.5]))


def tiny_study(**kw) -> StudyConfig:
    model = GPTConfig(vocab_size=260, d_model=32, n_layers=1, n_heads=4, n_kv_heads=4, max_seq_len=64)
    return StudyConfig(model=model, data=DataConfig(seq_len=16, max_tokens=6000), pretrain_steps=4, batch_size=2,
                       retrofit_fraction=0.5, retrofit_batch_size=2, crs=(2,), seeds=(0,), control=False,
                       eval_batch_size=4, eval_batches=2, device="cpu", **kw)


def test_stages_time_out_resume_and_skip_when_done(tmp_path):
    cut = run(tiny_study(stage_timeout_s={"dmc": 1e-3}), tmp_path)
    assert cut["base"]["status"] == "done" and cut["gqa-cr2-s0"]["status"] == "done"
    assert cut["dmc-cr2-s0"]["status"].startswith("timeout")
    assert set(load_evals(tmp_path)) == {"base", "gqa-cr2-s0"}
    seen = []
    done = run(tiny_study(), tmp_path, on_stage=lambda status: seen.append(dict(status)))
    assert done["base"]["status"] == done["gqa-cr2-s0"]["status"] == "done earlier"
    assert done["dmc-cr2-s0"]["status"] == "done" and len(seen) == 1  # only the stage that ran reports
    dmc = json.loads((tmp_path / "dmc-cr2-s0" / "test_eval.json").read_text())
    assert len(dmc["bits"]) == len(dmc["bytes"]) == 8 and dmc["compression_ratio"] >= 1.0
    assert (tmp_path / "dmc-cr2-s0" / "retrofit.json").is_file()


def test_no_stage_starts_past_the_deadline_or_without_a_base(tmp_path):
    status = run(tiny_study(deadline_s=0.0), tmp_path)
    assert all(s["status"].startswith("skipped: study deadline") for s in status.values())
    status = run(tiny_study(stage_timeout_s={"base": 1e-3}), tmp_path)
    assert status["base"]["status"].startswith("timeout")
    assert status["dmc-cr2-s0"]["status"] == "skipped: no finished base"
