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


def test_long_demo_runs_the_long_grid_and_refuses_what_it_cannot_do(tmp_path, capsys, monkeypatch):
    """``--long`` sweeps configs/frontier/long.yaml (a narrowed slice here, on the CPU when asked) into its own folder;
    without a long reference, without a GPU under ``--device auto``, or with ``--full``, one line and exit 2."""
    import pytest

    from leanformer.eval import models

    torch.manual_seed(42)
    ckpt = tiny_checkpoint(tmp_path / "model")
    slice_ = ["samples=1", "tasks=[niah]", "lengths=[1100]", "sparsities=[0.5]", "prefill=[vertical_slash]",
              "decode=[quest]", "max_new_tokens=4", "dtype=fp32", "batch_size=1", "prompt_workers=0", "progress=false"]
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--long", "--model", str(ckpt), "--device", "cpu", *slice_]) == 0
    printed = capsys.readouterr().out
    assert "(frontier-long.yaml) into runs/demo-long/results.db" in printed
    rows = sqlite3.connect(tmp_path / "runs" / "demo-long" / "results.db").execute(
        "select prefill_method, decode_method, params from results").fetchall()
    assert len(rows) == 3  # dense, vertical_slash, quest
    assert ('vertical_slash', 'dense', '{"decode":{},"prefill":{"block_size":64}}') in rows  # long.yaml's tiles
    monkeypatch.setitem(models.PACKAGED, "leanformer:reference-long", "assets/nothing-here")
    for args, says in ((["demo", "--long"], "ships no long-context reference"),
                       (["demo", "--long", "--model", str(ckpt), "--full"], "it takes no --full"),
                       (["demo", "--long", "--model", str(ckpt)], "run it where there is a GPU")):
        if "GPU" in says and torch.cuda.is_available():
            continue
        assert main(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and says in err[0], err
    with pytest.raises(FileNotFoundError):
        (tmp_path / "runs" / "demo").stat()  # the short demo's folder is untouched
