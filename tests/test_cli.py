import json
import subprocess
import sys
from pathlib import Path

import pytest

import leanformer
from leanformer.cli import main

PRESET = str(Path(__file__).parents[1] / "configs" / "gpt-shakespeare.yaml")
TINY = ["model.d_model=32", "model.n_layers=1", "model.n_heads=2", "model.n_kv_heads=1", "data.seq_len=16",
        "trainer.batch_size=2", "trainer.eval_batches=1", "trainer.progress=false", "trainer.device=cpu",
        "data.max_tokens=20000", "trainer.max_steps=3"]


def test_train_then_eval_prints_json_with_bits_per_byte(tmp_path, capsys):
    assert main(["train", PRESET, *TINY, "--out", str(tmp_path)]) == 0
    capsys.readouterr()
    assert main(["eval", str(tmp_path), "--split", "test", "--max-batches", "2"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["split"] == "test" and out["step"] == 3 and 0 < out["bits_per_byte"] < 9
    model = leanformer.load(tmp_path)
    assert not model.training
    import torch

    assert model(torch.zeros(1, 5, dtype=torch.long)).shape == (1, 5, 260)


@pytest.mark.parametrize("args, message", [
    (["train", PRESET, "trainer.max_stpes=3"],
     "unknown config key 'trainer.max_stpes'; did you mean 'trainer.max_steps'"),
    (["train", PRESET, "model.n_heads=5"], "model.n_heads: 5 does not divide model.d_model=192"),
    (["train", "/nonexistent.yaml"], "config file not found: /nonexistent.yaml"),
    (["eval", "/nonexistent-run"], "checkpoint path /nonexistent-run does not exist"),
    (["train", PRESET, "trainer.device=tpu"], "trainer.device: 'tpu' is not allowed"),
])
def test_user_errors_are_one_line_with_exit_2(tmp_path, args, message):
    r = subprocess.run([sys.executable, "-m", "leanformer.cli", *args, "--out", str(tmp_path / "o")]
                       if args[0] == "train" else [sys.executable, "-m", "leanformer.cli", *args],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [f"leanformer: error: {r.stderr.strip().split('error: ', 1)[1]}"]
    assert message in r.stderr and "Traceback" not in r.stderr
