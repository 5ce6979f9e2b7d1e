"""What a run folder allows (resume, refuse, start over), what a resume may change, and where metrics go: a folder
of damaged checkpoints is refused by name unless ``--restart``; a damaged checkpoint never counts towards
``keep_last``; no line of ``metrics.jsonl`` is ever lost; a changed model or data is one clear line; TensorBoard
events hold the logged scalars."""

import json
from pathlib import Path

import pytest

from leanformer.cli import main
from leanformer.config import load_run_config
from leanformer.errors import ConfigError
from leanformer.train.checkpoint import list_checkpoints, verify_checkpoint
from leanformer.train.trainer import Trainer

ROOT = Path(__file__).parents[2]
PRESET = ROOT / "configs" / "gpt-shakespeare.yaml"
TINY = ["model.d_model=32", "model.n_layers=1", "model.n_heads=2", "model.n_kv_heads=1", "data.seq_len=16",
        "trainer.batch_size=2", "trainer.eval_batches=1", "trainer.progress=false", "trainer.device=cpu",
        "data.max_tokens=20000", "trainer.log_every=1", "schedule.warmup_steps=1"]


def train(out, *over, **kw):
    return Trainer(load_run_config(PRESET, TINY + list(over)), out, **kw).fit()


def steps(path, kind="train"):
    return [e["step"] for e in map(json.loads, Path(path).read_text().splitlines()) if e["event"] == kind]


def damage(ckpt):
    (ckpt / "model.safetensors").write_bytes(b"\0" * 64)


def one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("leanformer: error: ") and err.count("\n") == 1, err
    return err


def test_a_folder_of_damaged_checkpoints_is_refused_by_name_unless_restart(tmp_path, capsys):
    out = tmp_path / "run"
    train(out, "trainer.max_steps=4", "trainer.ckpt_every=2", "trainer.keep_last=2")
    for ckpt in list_checkpoints(out):
        damage(ckpt)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    cmd = ["train", str(PRESET), *TINY, "trainer.max_steps=2", "--out", str(out)]
    assert main(cmd) == 2
    err = one_line(capsys)
    assert "none is usable" in err and "--restart" in err
    for ckpt in list_checkpoints(out):
        assert str(ckpt / "model.safetensors") in err
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # untouched

    assert main([*cmd, "--restart"]) == 0
    kept = out / "previous-1"
    assert [c.name for c in list_checkpoints(kept)] == ["step_00000002", "step_00000004"]
    assert (kept / "metrics.jsonl").read_bytes() == before[Path("metrics.jsonl")]  # every old line kept
    assert [c.name for c in list_checkpoints(out)] == ["step_00000002"] and steps(out / "metrics.jsonl") == [1, 2]


def test_damaged_checkpoints_never_count_towards_keep_last(tmp_path):
    out = tmp_path / "run"
    train(out, "trainer.max_steps=4", "trainer.ckpt_every=2", "trainer.keep_last=2")
    damage(list_checkpoints(out)[-1])  # step 4; the run resumes from step 2
    train(out, "trainer.max_steps=3", "trainer.ckpt_every=1", "trainer.keep_last=2")
    names = [c.name for c in list_checkpoints(out)]
    assert names == ["step_00000002", "step_00000003", "step_00000004"]  # the damaged one does not push out step 2
    verify_checkpoint(out / "checkpoints" / "step_00000002")
    verify_checkpoint(out / "checkpoints" / "step_00000003")


def test_no_metrics_line_is_ever_lost(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"event": "train", "step": 1, "loss": 9.0}\n')  # a run that never saved
    train(out, "trainer.max_steps=4", "trainer.ckpt_every=2", "trainer.eval_every=4")
    damage(list_checkpoints(out)[-1])
    train(out, "trainer.max_steps=5", "trainer.ckpt_every=2", "trainer.eval_every=4")
    assert steps(out / "metrics.jsonl") == [1, 2, 3, 4, 5]  # as an uninterrupted run logs it
    replaced = [json.loads(x) for x in (out / "metrics.replaced.jsonl").read_text().splitlines()]
    assert replaced[0] == {"event": "replaced", "resumed_from": 0, "lines": 1} and replaced[1]["loss"] == 9.0
    assert replaced[2] == {"event": "replaced", "resumed_from": 2, "lines": 3}
    assert [(e["event"], e["step"]) for e in replaced[3:]] == [("train", 3), ("train", 4), ("eval", 4)]


def test_resume_with_a_changed_model_or_data_is_one_line(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", str(PRESET), *TINY, "trainer.max_steps=2", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["train", "--out", str(out), "model.d_model=64"]) == 2
    err = one_line(capsys)
    assert "differs in model.d_model (32 -> 64)" in err and "may change" in err
    assert main(["train", str(ROOT / "configs" / "hourglass-shakespeare.yaml"), "--out", str(out)]) == 2
    assert "differs in model.name ('gpt' -> 'hourglass')" in one_line(capsys)
    assert main(["train", "--out", str(out), "data.seq_len=32"]) == 2
    assert "data.seq_len (16 -> 32)" in one_line(capsys)
    # the budget, cadence and learning rate may change; the saved config takes them
    assert main(["train", "--out", str(out), "trainer.max_steps=3", "trainer.eval_every=3", "optim.lr=1e-3"]) == 0
    saved = load_run_config(out / "config.yaml")
    assert (saved.trainer.max_steps, saved.optim.lr) == (3, 1e-3) and steps(out / "metrics.jsonl") == [1, 2, 3]


def test_a_warmup_longer_than_the_run_is_warned_about(tmp_path, capsys):
    train(tmp_path / "a", "trainer.max_steps=3", "schedule.warmup_steps=5")
    assert "schedule.warmup_steps=5 is not shorter than the run's 3 steps" in capsys.readouterr().err
    train(tmp_path / "b", "trainer.max_steps=3", "schedule.warmup_steps=2")
    assert "warmup" not in capsys.readouterr().err


def test_a_failed_data_check_leaves_no_empty_out_folder(tmp_path, capsys):
    short = tmp_path / "short.txt"
    short.write_text("hi")
    assert main(["train", str(PRESET), f"data.source={short}", "trainer.max_steps=2", "--out",
                 str(tmp_path / "new" / "run")]) == 2
    assert "fewer than data.seq_len" in one_line(capsys)
    assert not (tmp_path / "new").exists()


def test_distributed_defaults_to_ddp_under_torchrun(monkeypatch):
    import torch.distributed as dist

    from leanformer.config import TrainerConfig
    from leanformer.train.distributed import Distributed

    assert TrainerConfig(max_steps=1).distributed == "auto"
    assert Distributed("auto").mode == "none"
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(dist, "init_process_group", lambda *a, **k: None)
    assert Distributed("auto", "cpu").mode == "ddp"
    with pytest.raises(ConfigError, match="trainer.distributed=none: every rank would train alone"):
        Distributed("none")


def test_tensorboard_events_hold_the_logged_scalars(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    train(out, "trainer.max_steps=4", "trainer.eval_every=2", "trainer.loggers=[jsonl, tensorboard]")
    logged = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    tb_loss = [(e.step, e.value) for e in events.Scalars("train/loss")]
    assert tb_loss == [(e["step"], pytest.approx(e["loss"])) for e in logged if e["event"] == "train"]
    tb_eval = [(e.step, e.value) for e in events.Scalars("eval/val_bits_per_byte")]
    assert tb_eval == [(e["step"], pytest.approx(e["val_bits_per_byte"])) for e in logged if e["event"] == "eval"]
    assert len(tb_eval) == 2


@pytest.mark.parametrize("loggers, message", [("[tensorboard]", "must name each logger once and include 'jsonl'"),
                                              ("jsonl,wandb", "'wandb' is not allowed")])
def test_loggers_are_validated(loggers, message):
    with pytest.raises(ConfigError, match=message):
        load_run_config(PRESET, [f"trainer.loggers={loggers}", "trainer.max_steps=1"])
