"""Disk full and read-only output: training and sweeps fail before any work with one line naming the directory;
a disk that fills up mid-run keeps the last checkpoint / every committed row and says so."""

from __future__ import annotations

import errno
import shutil
import sqlite3
from collections import namedtuple
from pathlib import Path

import pytest

import leanformer.reliability as rel
from leanformer.cli import main
from leanformer.config import load_run_config
from leanformer.data.tokenizers import ByteTokenizer
from leanformer.errors import CheckpointError, UserError
from leanformer.models.registry import build_model
from leanformer.train.checkpoint import latest_checkpoint, list_checkpoints
from leanformer.train.trainer import Trainer

ROOT = Path(__file__).resolve().parents[2]
PRESET = ROOT / "configs" / "gpt-shakespeare.yaml"
TINY = ["model.d_model=32", "model.n_layers=1", "model.n_heads=2", "model.n_kv_heads=1", "data.seq_len=16",
        "trainer.batch_size=2", "trainer.eval_batches=1", "trainer.progress=false", "trainer.device=cpu",
        "data.max_tokens=20000", "trainer.max_steps=4", "trainer.ckpt_every=2", "trainer.eval_every=4"]
Usage = namedtuple("Usage", "total used free")


def _free(monkeypatch, free_bytes: int):
    monkeypatch.setattr(rel.shutil, "disk_usage", lambda p: Usage(1 << 40, (1 << 40) - free_bytes, free_bytes))


def test_full_disk_stops_training_before_it_starts(tmp_path, monkeypatch, capsys):
    _free(monkeypatch, 10 << 20)
    out = tmp_path / "run"
    assert main(["train", str(PRESET), *TINY, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"output directory {out} has 10.0 MiB free, but this run's checkpoints" in err
    assert not (out / "checkpoints").exists() and not (out / "metrics.jsonl").exists()


def test_estimate_scales_with_model_and_kept_checkpoints(tmp_path, monkeypatch):
    cfg = load_run_config(PRESET, TINY)
    need = rel.training_bytes(build_model(cfg.model), 2)
    _free(monkeypatch, need + rel.MARGIN_BYTES)  # exactly enough
    Trainer(cfg, tmp_path / "ok")
    _free(monkeypatch, need + rel.MARGIN_BYTES - 1)
    with pytest.raises(UserError, match="needs about"):
        Trainer(cfg, tmp_path / "short")


def test_read_only_output_fails_before_training(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UserError, match=f"output directory {blocker / 'run'} is not writable"):
        Trainer(load_run_config(PRESET, TINY), blocker / "run")  # under a regular file: even root cannot write

    def erofs(self, data):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(Path, "write_bytes", erofs)
    with pytest.raises(UserError, match="is not writable: Read-only file system"):
        Trainer(load_run_config(PRESET, TINY), tmp_path / "ro")


def test_disk_full_mid_checkpoint_keeps_previous(tmp_path, monkeypatch):
    import leanformer.train.checkpoint as ck

    real = ck.save_file
    calls = {"n": 0}

    def fill_up(tensors, path):
        calls["n"] += 1
        if calls["n"] == 2:  # the second checkpoint hits a full disk halfway through
            Path(path).write_bytes(b"\0" * 10)
            raise OSError(errno.ENOSPC, "No space left on device")
        real(tensors, path)

    monkeypatch.setattr(ck, "save_file", fill_up)
    out = tmp_path / "run"
    with pytest.raises(CheckpointError) as e:
        Trainer(load_run_config(PRESET, TINY), out).fit()
    msg = str(e.value)
    assert "No space left on device" in msg and "step_00000002 is intact" in msg and "\n" not in msg
    assert [c.name for c in list_checkpoints(out)] == ["step_00000002"] == [latest_checkpoint(out).name]
    assert not list((out / "checkpoints").glob(".tmp-*"))  # the partial write is cleaned up


def test_sweep_store_on_full_or_read_only_disk(tmp_path, monkeypatch, capsys):
    from leanformer.eval.store import ResultsStore

    blocker = tmp_path / "file"
    blocker.write_text("x")
    args = ["frontier", f"models={tmp_path / 'm'}", "tasks=niah", "lengths=701"]
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "llama", "max_position_embeddings": 4096}')
    monkeypatch.setattr("leanformer.eval.models.open_tokenizer", lambda spec, override=None: ByteTokenizer())
    assert main(args + [f"store={blocker / 'r.db'}"]) == 2
    assert f"output directory {blocker} is not writable" in capsys.readouterr().err
    _free(monkeypatch, 1 << 20)
    assert main(args + [f"store={tmp_path / 's' / 'r.db'}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "1.0 MiB free, but the results store needs about" in err
    assert not (tmp_path / "s" / "r.db").exists()

    store = ResultsStore(tmp_path / "r.db")
    row = {"cell_key": "k", "sample": 0, "model": "m", "prefill_method": "dense", "decode_method": "dense",
           "sparsity": 0.0, "task": "niah", "length": 1, "seed": 0, "score": 1.0}
    assert store.add(row)

    class FullConn:
        def __init__(self, conn):
            self.conn = conn

        def execute(self, sql, *a):
            if sql.startswith("INSERT"):
                raise sqlite3.OperationalError("database or disk is full")
            return self.conn.execute(sql, *a)

    store.conn = FullConn(store.conn)
    with pytest.raises(UserError, match=r"cannot write \(database or disk is full\); the 1 samples already "
                                        "committed are kept"):
        store.add({**row, "sample": 1})


def test_free_bytes_of_a_path_not_created_yet(tmp_path):
    assert rel.free_bytes(tmp_path / "a" / "b" / "c") == shutil.disk_usage(tmp_path).free


def test_every_writing_command_checks_its_output_first(tmp_path, capsys):
    """analyze and finetune write into --out: an unwritable one is a one-line error before any work."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    out = blocker / "out"
    assert main(["analyze", str(tmp_path / "syn.db"), "--synthetic", "--out", str(out)]) == 2
    assert f"output directory {out} is not writable" in capsys.readouterr().err
    assert not (tmp_path / "syn.db").exists()  # nothing was written before the check
    from leanformer.train.finetune import FinetuneConfig, finetune

    with pytest.raises(UserError, match=f"output directory {out} is not writable"):
        finetune(FinetuneConfig(init="hf:/nonexistent", task="shakespeare_speaker", max_steps=1), out)
