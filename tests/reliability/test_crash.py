"""kill -9 at named points of a checkpoint write, between training steps, after a committed sweep sample, and at
random moments (bounded: a few rounds each); after every kill the run resumes and must lose nothing.

Training: every ``step_*`` checkpoint on disk verifies after every kill (never a torn one), the newest never goes
backwards, and the finished run's loss sequence equals an uninterrupted run's, bit for bit (CPU, dropout on).
Sweep: no ``(cell, sample)`` twice after any kill, no committed row lost, and the finished store equals an
uninterrupted sweep's (same outputs and scores).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import crash_harness as ch  # noqa: E402

pytestmark = pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="the crash harness forks")


def test_training_survives_kill_9_at_every_crash_point_and_at_random(tmp_path):
    stats = ch.train_rounds(tmp_path, ch.TRAIN_POINTS, random_kills=3)
    assert stats["kills"] >= len(ch.TRAIN_POINTS), stats  # every named point was reached and killed the run
    assert stats["ckpt_kills"] == 5
    assert stats["torn"] == 0 and stats["regressions"] == 0, stats
    assert stats["max_step_lost"] <= 3, stats  # at most the steps since the last checkpoint (ckpt_every=3)
    assert stats["final"] == "exit 0" and stats["identical"], stats


def test_kill_inside_checkpoint_write_leaves_previous_checkpoint(tmp_path):
    from leanformer.train.checkpoint import latest_checkpoint, list_checkpoints

    out = tmp_path / "run"
    # Killed after the weights of the 3rd checkpoint (step 9) are written, before its state.json.
    assert ch.forked(ch.train_work(out), {"LEANFORMER_CRASH_AT": "ckpt.trainer@3"}) == "killed"
    assert [c.name for c in list_checkpoints(out)] == ["step_00000003", "step_00000006"]
    assert latest_checkpoint(out).name == "step_00000006"
    assert list((out / "checkpoints").glob(".tmp-step_00000009"))  # the half-written one stays hidden
    # Killed mid-prune: the pruned checkpoint is already renamed away, the two newest are whole.
    assert ch.forked(ch.train_work(out), {"LEANFORMER_CRASH_AT": "ckpt.pruning@1"}) == "killed"
    assert [c.name for c in list_checkpoints(out)] == ["step_00000006", "step_00000009"]
    assert ch.check_checkpoints(out) == 9
    assert ch.forked(ch.train_work(out)) == "exit 0"
    assert not list((out / "checkpoints").glob(".*"))  # leftovers cleaned by the next write


def test_sweep_survives_kill_9_after_commits_and_at_random(tmp_path):
    model = ch.tiny_llama(tmp_path / "model")
    stats = ch.sweep_rounds(tmp_path, model, point_kills=2, random_kills=2)
    assert stats["kills"] >= 2, stats
    assert stats["duplicates"] == 0 and stats["lost_rows"] == 0, stats
    assert stats["final"] == "exit 0", stats
    assert stats["rows"] == stats["expected_rows"] == 2 * 5 and stats["identical"], stats
