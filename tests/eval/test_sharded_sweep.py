"""A frontier sweep launched on 2 ranks the way torchrun launches it (RANK / WORLD_SIZE / LOCAL_RANK in the
environment, both processes at once, one SQLite store): every (cell, sample) is filled exactly once, and the rows
equal a one-process sweep's. ``device_map`` for models too large for one GPU fails clearly without accelerate."""

import importlib.util
import os
import subprocess
import sys

import pytest

from leanformer.errors import UserError
from leanformer.eval import harness
from leanformer.eval.models import load_model
from leanformer.eval.store import ResultsStore


def sweep_args(model, store):
    return ["frontier", f"models={model}", "tasks=niah", "lengths=701,903", "samples=3", "batch_size=2",
            "max_new_tokens=4", "tokenizer=byte", f"store={store}", "--device", "cpu", "progress=false"]


def test_two_ranks_fill_every_cell_exactly_once(tiny_model, tmp_path):
    store = tmp_path / "sharded.db"
    procs = []
    for rank in range(2):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "OMP_NUM_THREADS": "1"}
        procs.append(subprocess.Popen([sys.executable, "-m", "leanformer.cli", *sweep_args(tiny_model, store)],
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    for p in procs:
        out = p.communicate(timeout=240)[0]
        assert p.returncode == 0, out[-3000:]
    with ResultsStore(store) as s:
        rows = s.rows()
    keys = [(r["cell_key"], r["sample"]) for r in rows]
    assert len(keys) == len(set(keys)) == 2 * 3  # 2 cells x 3 samples, none twice
    # The same rows as one process (greedy decoding: identical outputs).
    c = harness.load_config({"models": [tiny_model], "tasks": ["niah"], "lengths": [701, 903], "samples": 3,
                             "batch_size": 2, "max_new_tokens": 4, "tokenizer": "byte", "device": "cpu",
                             "store": str(tmp_path / "one.db"), "progress": False})
    assert harness.run_sweep(c)["added"] == 6
    with ResultsStore(c.store) as s:
        ref = {(r["cell_key"], r["sample"]): r["output"] for r in s.rows()}
    assert {(r["cell_key"], r["sample"]): r["output"] for r in rows} == ref


@pytest.mark.skipif(importlib.util.find_spec("accelerate") is not None, reason="accelerate installed")
def test_device_map_without_accelerate_is_one_clear_error(tiny_model):
    with pytest.raises(UserError, match="device_map='auto' needs the 'accelerate' package"):
        load_model(tiny_model, device_map="auto")


def test_local_worker_processes_fill_every_cell_once_and_resume(tiny_model, tmp_path, capfd):
    """``leanformer frontier --workers 2``: two spawned processes share the grid and one store; the rows equal a
    one-process sweep's, and a rerun adds nothing; one progress bar (the parent's), not one per worker writing over
    the other in a log. Bad worker counts are refused before any work."""
    from leanformer.cli import main

    store = tmp_path / "workers.db"
    with_bar = [a for a in sweep_args(tiny_model, store) if a != "progress=false"]
    assert main([*with_bar, "--workers", "2"]) == 0
    out, err = capfd.readouterr()  # the workers' output too (file descriptors)
    assert "2 processes: 2 cells, 0 samples already done, 6 added" in out
    assert "frontier[" not in err and "frontier: 100%" in err, err
    with ResultsStore(store) as s:
        rows = {(r["cell_key"], r["sample"]): r["output"] for r in s.rows()}
    c = harness.load_config({"models": [tiny_model], "tasks": ["niah"], "lengths": [701, 903], "samples": 3,
                             "batch_size": 2, "max_new_tokens": 4, "tokenizer": "byte", "device": "cpu",
                             "store": str(tmp_path / "one.db"), "progress": False})
    harness.run_sweep(c)
    with ResultsStore(c.store) as s:
        assert rows == {(r["cell_key"], r["sample"]): r["output"] for r in s.rows()}
    assert harness.run_sweep_processes(harness.load_config({**c.__dict__, "store": str(store)}), 2) == {
        "cells": 2, "done_before": 6, "added": 0}
    with pytest.raises(UserError, match="workers=0"):
        harness.run_sweep_processes(c, 0)
    assert main([*sweep_args(tiny_model, store), "--workers", "2", "--world-size", "2"]) != 0
    assert "--workers 2 shards the grid itself: not with world size 2" in capfd.readouterr().err


def test_demo_worker_count():
    from leanformer.demo import REFERENCE, demo_workers

    assert demo_workers("3", "cpu", "x") == 3
    assert demo_workers("auto", "cuda", REFERENCE) == 1 and demo_workers("auto", "cpu", "some/dir") == 1
    assert demo_workers("auto", "cpu", REFERENCE) == (2 if (os.cpu_count() or 1) >= 2 else 1)
    for bad in ("0", "two"):
        with pytest.raises(UserError, match=f"--workers '{bad}'"):
            demo_workers(bad, "cpu", REFERENCE)
