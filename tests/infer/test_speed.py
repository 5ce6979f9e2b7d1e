"""``leanformer speed`` on a tiny model on the CPU: every row measured, speedups against the faster dense baseline,
JSON / Markdown / plot written, a rerun resumes, bad input refused before any work."""

from __future__ import annotations

import json

import pytest
import torch

from leanformer.cli import main
from leanformer.infer.speed import Row
from leanformer.infer.speed_report import speedups

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.manual_seed(0)
    cfg = transformers.Qwen2Config(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024)
    path = tmp_path_factory.mktemp("tiny")
    transformers.Qwen2ForCausalLM(cfg).save_pretrained(path)
    return str(path)


def test_speed_writes_every_row_and_resumes(tiny, tmp_path, capsys):
    out = tmp_path / "speed"
    argv = ["speed", tiny, "--lengths", "256", "--prefill", "block_topk", "--decode", "snapkv", "quest",
            "--sparsity", "0.75", "--batch", "1", "2", "--new-tokens", "3", "--repeat", "1", "--param",
            "block_size=16", "--out", str(out)]
    assert main(argv) == 0
    data = json.loads((out / "speed.json").read_text())
    rows = data["rows"]
    kinds = {(r["kind"], r["method"], r["batch_spec"]) for r in rows}
    assert {("prefill", "hf", "1"), ("prefill", "dense", "1"), ("prefill", "block_topk", "1"),
            ("decode", "hf", "1"), ("decode", "dense", "2"), ("decode", "snapkv", "2"),
            ("decode", "quest", "1")} <= kinds
    assert all(r["status"] == "ok" for r in rows)
    snap = next(r for r in rows if r["method"] == "snapkv" and r["batch_spec"] == "1")
    dense = next(r for r in rows if r["method"] == "dense" and r["kind"] == "decode" and r["batch_spec"] == "1")
    assert snap["cache_mb_per_seq"] < 0.4 * dense["cache_mb_per_seq"]  # physically evicted
    assert "speedup" in snap and data["meta"]["engine_check_rel_error"] < 1e-3
    assert (out / "speed.md").read_text().count("|") > 20 and (out / "speed.png").stat().st_size > 1000
    assert data["meta"]["settings"]["packed_projections"] and "packed" in (out / "speed.md").read_text()
    capsys.readouterr()
    # a rerun with the same settings measures nothing again
    assert main(argv) == 0
    assert json.loads((out / "speed.json").read_text())["rows"] == rows


def test_speedup_is_against_the_faster_dense_baseline():
    rows = [Row(100, "prefill", "hf", 0.0, 1, "1", ttft_s=2.0), Row(100, "prefill", "dense", 0.0, 1, "1", ttft_s=1.0),
            Row(100, "prefill", "block_topk", 0.9, 1, "1", ttft_s=0.5),
            Row(100, "decode", "dense", 0.0, 1, "1", tokens_per_s=10.0),
            Row(100, "decode", "hf", 0.0, 1, "1", tokens_per_s=20.0),
            Row(100, "decode", "snapkv", 0.9, 1, "1", tokens_per_s=30.0)]
    s = {r["method"] + r["kind"]: r.get("speedup") for r in speedups(rows)}
    assert s["block_topkprefill"] == 2.0 and s["snapkvdecode"] == 1.5


@pytest.mark.parametrize("extra,message", [
    (["--lengths", "2048"], "position limit"),
    (["--lengths", "256", "--batch", "max"], "needs a CUDA device"),
    (["--lengths", "256", "--batch", "zero"], "positive integers or 'max'"),
    (["--lengths", "256", "--prefill", "nope"], "unknown --prefill method"),
    (["--lengths", "256", "--sparsity", "1.5"], "--sparsity must be in"),
    (["--lengths", "256", "--param", "bogus=1"], "belongs to none"),
    (["--lengths", "256", "--device", "cuda:0"] if not torch.cuda.is_available() else ["--lengths", "10"],
     "no CUDA device" if not torch.cuda.is_available() else "at least 16"),
])
def test_bad_input_is_one_line(tiny, tmp_path, capsys, extra, message):
    out = tmp_path / "o"
    assert main(["speed", tiny, *extra, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (out / "speed.json").exists()


def test_presets_are_checked_before_any_weights_are_built(tmp_path, capsys):
    assert main(["speed", "arch:gpt-5", "--lengths", "64", "--out", str(tmp_path / "o")]) == 2
    assert "unknown architecture preset" in capsys.readouterr().err
    # a 7B preset is never built on this CPU for a length past its 128K positions
    assert main(["speed", "arch:qwen2.5-7b", "--lengths", "999999", "--out", str(tmp_path / "o")]) == 2
    assert "exceeds the model's position limit 131072" in capsys.readouterr().err
    # nor one whose weights cannot fit this machine's memory (fp32 72B: ~290 GiB)
    assert main(["speed", "arch:qwen2.5-72b", "--lengths", "64", "--out", str(tmp_path / "o")]) == 2
    assert "for its weights in float32" in capsys.readouterr().err
