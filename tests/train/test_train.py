import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from leanformer.config import ScheduleConfig, load_run_config
from leanformer.errors import CheckpointError, UserError
from leanformer.train.checkpoint import latest_checkpoint, list_checkpoints, verify_checkpoint
from leanformer.train.schedules import lr_multiplier
from leanformer.train.trainer import Trainer

TINY = ["model.d_model=32", "model.n_layers=2", "model.n_heads=2", "model.n_kv_heads=1", "data.seq_len=32",
        "trainer.batch_size=4", "trainer.eval_batches=2", "trainer.log_every=1", "trainer.progress=false",
        "trainer.device=cpu", "schedule.warmup_steps=2", "data.max_tokens=40000", "model.dropout=0.1"]
ROOT = Path(__file__).parents[2]
PRESET = ROOT / "configs" / "gpt-shakespeare.yaml"


def losses(run_dir):
    events = [json.loads(x) for x in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return [(e["step"], e["loss"]) for e in events if e["event"] == "train"]


def train(out, *over):
    cfg = load_run_config(PRESET, TINY + list(over))
    return Trainer(cfg, out).fit()


def test_resume_reproduces_uninterrupted_loss_sequence_exactly(tmp_path):
    train(tmp_path / "a", "trainer.max_steps=8", "trainer.ckpt_every=100", "trainer.eval_every=4")
    # Interrupted run: stops at step 4 (with a checkpoint), then resumes with the full budget.
    train(tmp_path / "b", "trainer.max_steps=8", "trainer.max_seconds=1e-9", "trainer.ckpt_every=100",
          "trainer.eval_every=4")
    assert [s for s, _ in losses(tmp_path / "b")] == [1]
    cfg = load_run_config(tmp_path / "b" / "config.yaml", ["trainer.max_seconds=null"])
    Trainer(cfg, tmp_path / "b").fit()
    la, lb = losses(tmp_path / "a"), losses(tmp_path / "b")
    assert len(la) == 8 and la == lb  # bit-exact, dropout included


def test_resume_after_kill_9_midrun(tmp_path):
    out = tmp_path / "run"
    args = [sys.executable, "-m", "leanformer.cli", "train", str(PRESET), *TINY, "model.d_model=64",
            "trainer.max_steps=40", "trainer.ckpt_every=5", "trainer.eval_every=20", "--out", str(out)]
    ref = tmp_path / "ref"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        ck = list_checkpoints(out)
        if ck and int(ck[-1].name.split("_")[1]) >= 10:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed; make it longer"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = losses(out)[-1][0]
    assert killed_at < 40
    subprocess.run(args, env=env, check=True, capture_output=True)
    subprocess.run(args[:-1] + [str(ref)], env=env, check=True, capture_output=True)
    assert losses(out) == losses(ref) and len(losses(ref)) == 40


def test_checkpoints_atomic_verified_and_pruned(tmp_path):
    train(tmp_path, "trainer.max_steps=6", "trainer.ckpt_every=2", "trainer.keep_last=2", "trainer.eval_every=6")
    cks = list_checkpoints(tmp_path)
    assert [c.name for c in cks] == ["step_00000004", "step_00000006"]
    (tmp_path / "checkpoints" / ".tmp-step_00000008").mkdir()  # a crash mid-write leaves only a temp dir
    assert latest_checkpoint(tmp_path) == cks[-1]
    weights = cks[-1] / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"model\.safetensors is corrupted \(checksum mismatch\)"):
        verify_checkpoint(cks[-1])
    assert latest_checkpoint(tmp_path) == cks[0]  # falls back to the previous good one


def test_schedule_warmup_then_decays_to_floor_at_budget():
    s = ScheduleConfig(name="cosine", warmup_steps=10, final_lr_fraction=0.1)
    assert lr_multiplier(s, 0, 0.0) == pytest.approx(0.1)
    assert lr_multiplier(s, 9, 0.09) == pytest.approx(1.0)
    assert lr_multiplier(s, 50, 1.0) == pytest.approx(0.1)
    assert lr_multiplier(s, 50, 0.5) == pytest.approx(0.1 + 0.9 * 0.5)
    lin = ScheduleConfig(name="linear", warmup_steps=0, final_lr_fraction=0.0)
    assert lr_multiplier(lin, 5, 0.25) == pytest.approx(0.75)
    const = ScheduleConfig(name="constant", warmup_steps=0)
    assert lr_multiplier(const, 5, 0.99) == 1.0


def test_training_reduces_loss_and_writes_run_dir(tmp_path):
    r = train(tmp_path, "trainer.max_steps=30", "trainer.eval_every=30", "optim.lr=1e-2", "model.dropout=0.0")
    ls = [v for _, v in losses(tmp_path)]
    assert ls[-1] < ls[0] - 1.0
    assert (tmp_path / "config.yaml").is_file() and latest_checkpoint(tmp_path) is not None
    assert r["last_eval"]["bits_per_byte"] < math.log2(260)


def test_nan_loss_stops_with_clear_error_and_keeps_checkpoint(tmp_path):
    train(tmp_path, "trainer.max_steps=2", "trainer.ckpt_every=2", "trainer.eval_every=2")
    cfg = load_run_config(tmp_path / "config.yaml", ["trainer.max_steps=4"])
    cfg.optim.lr = float("inf")  # step 3 then blows the weights up, so the loss at step 4 is not finite
    t = Trainer(cfg, tmp_path)
    with pytest.raises(UserError, match=r"training loss became (nan|inf) at step 4; stopped"):
        t.fit()
    assert latest_checkpoint(tmp_path).name == "step_00000002"


def test_unwritable_output_dir_fails_before_training(tmp_path):
    if os.geteuid() == 0:
        blocker = tmp_path / "file"
        blocker.write_text("x")
        out = blocker / "run"  # a path under a regular file can never be created, even by root
    else:
        out = tmp_path / "ro"
        out.mkdir()
        out.chmod(0o500)
    cfg = load_run_config(PRESET, TINY + ["trainer.max_steps=1"])
    with pytest.raises(UserError, match="is not writable"):
        Trainer(cfg, out)
