"""The main job: ``leanformer demo`` runs the sparse-frontier study end to end on a checkpoint (a tiny stand-in here),
and trains the default model while no reference checkpoint is shipped."""

import json
import sqlite3

import torch

from leanformer import demo
from leanformer.cli import main
from leanformer.models.gpt import GPT, GPTConfig


def tiny_checkpoint(path):
    model = GPT(GPTConfig(vocab_size=260, d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, max_seq_len=4096))
    model.save_pretrained(path)
    meta = json.loads((path / "model.json").read_text())
    meta["tokenizer"] = "byte"
    (path / "model.json").write_text(json.dumps(meta))
    return path


def test_frontier_demo_writes_store_report_and_summary(tmp_path, capsys):
    torch.manual_seed(42)
    ckpt = tiny_checkpoint(tmp_path / "model")
    out = tmp_path / "demo"
    args = ["demo", "--model", str(ckpt), "--out", str(out), "samples=1", "tasks=[niah]", "lengths=[1200]",
            "sparsities=[0.5]", "prefill=[block_topk, streaming]", "decode=[quest, snapkv]", "max_new_tokens=4",
            "progress=false"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    rows = sqlite3.connect(out / "results.db").execute(
        "select prefill_method, decode_method, sparsity from results").fetchall()
    assert len(rows) == 5 == len(set(rows))  # dense + 2 prefill + 2 decode cells, one sample each
    assert (out / "report" / "report.md").is_file() and list((out / "report").glob("*.png"))
    assert "dense accuracy" in printed and "safe sparsity" in printed and "block_topk" in printed
    assert "-> prefill:" in printed and "-> decode:" in printed
    assert main(args) == 0  # resumes: nothing new to run, nothing duplicated
    assert len(sqlite3.connect(out / "results.db").execute("select * from results").fetchall()) == 5
    # a new checkpoint in the same folder: the old store goes aside and the study starts afresh
    torch.manual_seed(7)
    tiny_checkpoint(ckpt)
    capsys.readouterr()
    assert main(args) == 0
    assert "moved to" in capsys.readouterr().out and (out / "results-stale-1.db").is_file()
    assert len(sqlite3.connect(out / "results.db").execute("select * from results").fetchall()) == 5


def test_demo_trains_default_model_while_no_reference_is_shipped(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(demo, "reference_dir", lambda: None)
    over = ["model.d_model=32", "model.n_layers=1", "model.n_heads=2", "model.n_kv_heads=1", "data.seq_len=16",
            "trainer.batch_size=2", "trainer.max_steps=2", "trainer.eval_batches=1", "trainer.progress=false",
            "data.max_tokens=20000"]
    assert main(["demo", "--out", str(tmp_path / "run"), "--device", "cpu", *over]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0 < summary["test_bits_per_byte"] < 9 and 4 < summary["unigram_entropy_bits_per_byte"] < 5
