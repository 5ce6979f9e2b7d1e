"""``leanformer frontier`` end to end: a sweep SIGKILLed mid-run resumes with nothing lost and nothing duplicated;
bad inputs exit 2 with one clear line before any work; flags, YAML and --set compose; no torch at import time."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time

from leanformer.cli import main


def _rows(db) -> list[tuple]:
    conn = sqlite3.connect(db, timeout=30)
    try:
        return conn.execute("SELECT cell_key, sample FROM results").fetchall()
    except sqlite3.OperationalError:  # the table is not created yet
        return []
    finally:
        conn.close()


def test_sigkill_mid_sweep_then_resume(tiny_model, tmp_path):
    db = tmp_path / "r.db"
    config = tmp_path / "grid.yaml"
    config.write_text(f"models: [{tiny_model}]\ntasks: [niah, common_words]\nlengths: [1201, 1601]\n"
                      f"samples: 12\nmax_new_tokens: 8\ntokenizer: byte\nstore: {db}\n")
    cmd = [sys.executable, "-m", "leanformer.cli", "frontier", "-c", str(config), "--no-progress"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while len(_rows(db)) < 3 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    at_kill = len(_rows(db))
    assert 3 <= at_kill < 48, "the sweep must be killed mid-way"
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = _rows(db)
    assert len(rows) == len(set(rows)) == 4 * 12  # exactly one row per cell x sample
    assert f"{at_kill} samples already done" in done.stdout
    assert done.stdout.count("/tiny") >= 4  # the summary table: one line per cell


def test_bad_inputs_exit_2_with_one_line_and_no_work(tiny_model, tmp_path, capsys):
    db = tmp_path / "r.db"
    base = ["frontier", "--models", tiny_model, "--tokenizer", "byte", "--store", str(db), "--lengths", "1201"]
    cases = [(["--tasks", "niah,haystack"], "unknown task 'haystack'; choose from niah, variable_tracking"),
             (["--tasks", "niah", "--prefill", "magic"], "unknown prefill method 'magic'; choose from dense"),
             (["--tasks", "niah", "--sparsities", "1.5"], "sparsity 1.5 is outside [0, 1)"),
             (["--tasks", "niah", "--lengths", "99999"], "length 99999 is beyond the context of model"),
             (["--tasks", "niah", "--samples", "many"], "--samples: 'many' is not a valid int"),
             (["--tasks", "niah", "--set", "task_params.niah.n_queries=9"], "n_queries=9"),
             (["--tasks", "niah,story_retrieval"], "task 'story_retrieval': length 1201 is too short"),
             (["--tasks", "niah", "--decode", "streaming", "--set", "method_params.streaming.block_size=32"],
              "decode method 'streaming' has no parameter 'block_size'"),
             (["--tasks", "niah", "--set", "method_params.decode:magic.window=3"], "unknown method 'decode:magic'"),
             ([], "no tasks given")]
    for extra, message in cases:
        assert main(base + extra) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert not db.exists()


def test_dry_run_counts_the_shard(tiny_model, tmp_path, capsys):
    args = ["frontier", "--models", tiny_model, "--tokenizer", "byte", "--store", str(tmp_path / "r.db"),
            "--tasks", "niah,qa,story_filtering", "--lengths", "3001,4001", "--samples", "4", "--dry-run"]
    assert main(args + ["--rank", "1", "--world-size", "4"]) == 0
    assert "grid ok: 2 cells x 4 samples for rank 1/4" in capsys.readouterr().out
    assert not _rows(tmp_path / "r.db")


def test_cli_module_does_not_import_torch():
    code = ("import sys, leanformer.eval.frontier_cli, leanformer.eval.harness, leanformer.eval.store; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_shipped_configs_name_valid_tasks_and_methods():
    from pathlib import Path

    from leanformer.config import load_yaml
    from leanformer.eval import harness
    from leanformer.eval.models import method_names
    from leanformer.tasks import TASKS

    files = sorted((Path(__file__).resolve().parents[2] / "configs" / "frontier").glob("*.yaml"))
    assert len(files) >= 2
    prefill_ok, decode_ok = method_names()
    for f in files:
        c = harness.load_config(load_yaml(f))
        assert set(c.tasks) <= set(TASKS) and all(0 <= s < 1 for s in c.sparsities)
        if len(prefill_ok) > 1:  # the sparse package is there: every method must be known to it
            assert all(p in prefill_ok and d in decode_ok for p, d in harness.method_pairs(c)), f
        assert len(harness.build_grid(c)) > 0
