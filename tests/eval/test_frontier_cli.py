"""``leanformer frontier`` end to end: a sweep SIGKILLed mid-run resumes with nothing lost and nothing duplicated;
bad inputs exit 2 with one clear line before any work; YAML and key=value overrides compose, in any order among the
flags (older field flags still work as aliases); a dry run writes nothing; no torch at import time."""

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
    cmd = [sys.executable, "-m", "leanformer.cli", "frontier", str(config), "progress=false"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300  # generous: a loaded machine takes long to start the sweep
    while len(_rows(db)) < 3 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    at_kill = len(_rows(db))
    assert 3 <= at_kill < 48, "the sweep must be killed mid-way"
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = _rows(db)
    assert len(rows) == len(set(rows)) == 4 * 12  # exactly one row per cell x sample
    assert f"{at_kill} samples already done" in done.stdout
    assert done.stdout.count("/tiny") >= 4  # the summary table: one line per cell


def test_bad_inputs_exit_2_with_one_line_and_no_work(tiny_model, tmp_path, capsys):
    db = tmp_path / "sub" / "r.db"
    base = ["frontier", f"models={tiny_model}", "tokenizer=byte", f"store={db}", "lengths=1201"]
    cases = [(["tasks=niah,haystack"], "unknown task 'haystack'; choose from niah, variable_tracking"),
             (["tasks=niah", "prefill=magic"], "unknown prefill method 'magic'; choose from dense"),
             (["tasks=niah", "sparsities=1.5"], "sparsity 1.5 is outside [0, 1)"),
             (["tasks=niah", "lengths=99999"], "length 99999 is beyond the context of model"),
             (["tasks=niah", "samples=many"], "samples: expected an integer, got 'many'"),
             (["tasks=niah", "task_params.niah.n_queries=9"], "n_queries=9"),
             (["tasks=niah,story_retrieval"], "task 'story_retrieval': length 1201 is too short"),
             (["tasks=niah", "decode=streaming", "method_params.streaming.block_size=32"],
              "decode method 'streaming' has no parameter 'block_size'"),
             (["tasks=niah", "method_params.decode:magic.window=3"], "unknown method 'decode:magic'"),
             (["tasks=niah", "sampels=2"], "unknown config key 'sampels'; did you mean 'samples'?"),
             (["tasks=niah", "--dry-run", "--nope"], "unrecognized arguments: --nope"),
             (["tasks=niah", "device=cuda:99"], "device=cuda:99: "),
             (["tasks=niah", "models=/nonexistent/path"], "model '/nonexistent/path': path not found"),
             ([], "no tasks given")]
    for extra, message in cases:
        assert main(base + extra) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert not db.parent.exists()  # nothing created: no store, no folder


def test_overrides_anywhere_and_old_flags_as_aliases(tiny_model, tmp_path, capsys):
    """``key=value`` before, between and after the flags; ``--tasks niah``, ``-c FILE`` and ``--set k=v`` of
    earlier versions mean the same overrides."""
    grid = tmp_path / "grid.yaml"
    grid.write_text(f"models: [{tiny_model}]\ntokenizer: byte\nstore: {tmp_path / 'r.db'}\n")
    spellings = [["frontier", str(grid), "--dry-run", "tasks=niah,qa", "--rank", "0", "lengths=[3001,4001]"],
                 ["frontier", "--dry-run", "tasks=niah,qa", str(grid), "lengths=3001,4001"],
                 ["frontier", "-c", str(grid), "--tasks", "niah,qa", "--dry-run", "--set", "lengths=[3001, 4001]"]]
    for args in spellings:
        assert main(args) == 0
        assert "grid ok: 4 cells x 10 samples for rank 0/1" in capsys.readouterr().out


def test_dry_run_counts_the_shard_and_writes_nothing(tiny_model, tmp_path, capsys):
    store = tmp_path / "new" / "r.db"
    args = ["frontier", f"models={tiny_model}", "tokenizer=byte", f"store={store}", "tasks=niah,qa,story_filtering",
            "lengths=3001,4001", "samples=4", "--dry-run"]
    assert main(args + ["--rank", "1", "--world-size", "4"]) == 0
    assert "grid ok: 2 cells x 4 samples for rank 1/4" in capsys.readouterr().out
    assert not store.parent.exists()  # no store and no folder for it


def test_a_sweep_that_fails_before_its_first_sample_leaves_no_store(tiny_model, tmp_path, monkeypatch, capsys):
    from leanformer.errors import UserError
    from leanformer.eval import models

    def no_device(*a, **k):
        raise UserError("the model cannot be placed on its device")

    monkeypatch.setattr(models, "load_model", no_device)
    store = tmp_path / "new" / "r.db"
    assert main(["frontier", f"models={tiny_model}", "tokenizer=byte", "tasks=niah", "lengths=1201", "samples=1",
                 f"store={store}", "progress=false"]) == 2
    assert "cannot be placed" in capsys.readouterr().err
    assert not store.parent.exists()


def test_hub_name_offline_is_detected_once(tmp_path, monkeypatch, capsys):
    """A hub model that cannot be fetched: one connection attempt, then one line saying the hub is out of reach
    (not half a minute of retries per file)."""
    import socket

    from huggingface_hub import constants

    from leanformer.eval import models

    calls = []

    def refuse(*a, **k):
        calls.append(a)
        raise OSError("network is unreachable")

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    models.hub_offline.cache_clear()
    try:
        t0 = time.perf_counter()
        assert main(["frontier", "models=someorg/some-model-x", "tasks=niah", "lengths=1024",
                     f"store={tmp_path / 'r.db'}", "--dry-run"]) == 2
        err = capsys.readouterr().err
        assert "Hugging Face hub cannot be reached" in err and err.count("\n") == 1, err
        assert len(calls) == 1 and time.perf_counter() - t0 < 10
        assert constants.HF_HUB_OFFLINE  # later lookups in this process answer from the cache at once
    finally:
        models.hub_offline.cache_clear()


def test_cli_module_does_not_import_torch():
    code = ("import sys, leanformer.eval.frontier_cli, leanformer.eval.harness, leanformer.eval.store; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=180)


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
