import json
import time

import pytest

from leanformer.cli import main
from leanformer.errors import ConfigError
from leanformer.train.budgets import RSTClock
from leanformer.train.hooks import TrainHook
from leanformer.train.rst import RSTTable, theil_sen
from leanformer.train.schedules import lr_multiplier
from leanformer.train.trainer import Trainer


class SlowMachine(TrainHook):
    """Injects wall-time slow-down: every step sleeps."""

    name = "slow"

    def on_step_begin(self, trainer, step, progress):
        time.sleep(0.03)


def events(run_dir, kind):
    return [e for e in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if e["event"] == kind]


def test_rst_clock_ignores_injected_wall_time_slowdown_and_drives_the_schedule(tmp_path, ntng):
    tiny_cfg, synthetic_table = ntng.tiny_cfg, ntng.synthetic_table
    cfg0 = tiny_cfg()
    table = synthetic_table(cfg0)
    table.save(tmp_path / "rst.json")
    step_s = table.fwd_bwd[-1] + 0.01  # one micro-batch at full depth + the optimizer step
    budget = 7 * step_s - 1e-9
    over = ["trainer.max_steps=null", f"trainer.max_seconds={budget}", f"trainer.rst_table={tmp_path / 'rst.json'}",
            "trainer.eval_every=100"]
    fast = Trainer(tiny_cfg(*over), tmp_path / "fast").fit()
    slow = Trainer(tiny_cfg(*over), tmp_path / "slow", hooks=[SlowMachine()]).fit()
    assert fast["step"] == slow["step"] == 7
    assert slow["elapsed_s"] > fast["elapsed_s"] + 0.15  # the slow-down happened, in wall time
    tf, ts = events(tmp_path / "fast", "train"), events(tmp_path / "slow", "train")
    assert [(e["loss"], e["lr"], e["clock_s"]) for e in tf] == [(e["loss"], e["lr"], e["clock_s"]) for e in ts]
    cfg = tiny_cfg(*over)
    for i, e in enumerate(tf):  # LR follows the RST fraction spent before the step: decays to 0 at the budget
        assert e["lr"] == pytest.approx(cfg.optim.lr * lr_multiplier(cfg.schedule, i, i * step_s / budget))
    assert tf[-1]["clock_s"] >= budget > tf[-2]["clock_s"]


def test_clock_charges_by_active_layers_and_examples(ntng):
    tiny_cfg, synthetic_table = ntng.tiny_cfg, ntng.synthetic_table
    table = synthetic_table(tiny_cfg())  # 4 layers: 0.05 + 0.1 k per micro-batch of 3
    clock = RSTClock(table, optimizer="lion")
    clock.active_fraction = 0.5
    clock.micro_batch(3)
    assert clock.seconds == pytest.approx(0.25)
    clock.forward(6, active_fraction=1.0)
    assert clock.seconds == pytest.approx(0.25 + 2 * 0.45 / 3)
    clock.optimizer_step()
    clock.wall(100.0)
    assert clock.seconds == pytest.approx(0.25 + 0.3 + 0.01)
    with pytest.raises(ConfigError, match="optim.name='nadam' has no step time"):
        RSTClock(table, optimizer="nadam")


def test_theil_sen_fit_ignores_one_noisy_entry():
    assert theil_sen([1.0, 2.0, 30.0, 4.0, 5.0]) == pytest.approx([1, 2, 3, 4, 5])


def test_calibrate_cli_writes_a_table_that_refuses_other_models(tmp_path, capsys, ntng):
    PRESET, TINY, tiny_cfg = ntng.PRESET, ntng.TINY, ntng.tiny_cfg
    out = tmp_path / "rst.json"
    assert main(["rst", "calibrate", str(PRESET), *TINY, "model.n_layers=2", "--out", str(out), "--repeats", "2",
                 "--warmup", "1"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    table = RSTTable.load(out)
    assert summary["layers"] == table.layers == 2 and len(table.fwd_bwd) == len(table.forward) == 3
    assert all(b >= a for a, b in zip(table.fwd_bwd, table.fwd_bwd[1:]))
    assert {"adamw", "lion", "sophia"} <= set(table.optimizer_step)
    assert table.machine["torch"] and table.machine["device"] == "cpu"
    table.check(tiny_cfg("model.n_layers=2"))
    with pytest.raises(ConfigError, match="differs in model.d_model"):
        table.check(tiny_cfg("model.n_layers=2", "model.d_model=64"))
