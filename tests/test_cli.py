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
    assert main(["train", PRESET, *TINY[:5], "--out", str(tmp_path), *TINY[5:]]) == 0  # overrides around a flag
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


def _one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("leanformer: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_overrides_before_or_after_flags_in_every_subcommand(tmp_path, capsys):
    """A misspelled key placed after the flags reaches the config's validation (not argparse's "unrecognized
    arguments") in every subcommand that reads a config."""
    out = str(tmp_path / "o")
    cases = [(["train", PRESET, "--out", out, "trainer.max_stpes=3"], "unknown config key 'trainer.max_stpes'"),
             (["train", "--out", out, PRESET, "--restart", "trainer.max_stpes=3"], "'trainer.max_stpes'"),
             (["finetune", "--out", out, "init=hf:x", "max_stesp=3"], "unknown config key 'max_stesp'"),
             (["frontier", "--dry-run", "tasks=niah", "sampels=3"], "unknown config key 'sampels'"),
             (["dmc", "retrofit", "--out", out, "runs/x", "budgte=3"], "unknown config key 'budgte'"),
             (["dmc", "gqa", "runs/x", "--out", out, "target_cr=2", "--device", "cpu", "windw=3"], "'windw'"),
             (["rst", "calibrate", "--out", out, PRESET, "model.n_layerz=2"], "'model.n_layerz'"),
             (["compare", "--budget", "1s", PRESET, "--seeds", "1", "trainer.max_stpes=1", "--out", out],
              "'trainer.max_stpes'"),
             (["demo", "--out", out, "sampels=2", "--workers", "1"], "unknown config key 'sampels'")]
    for args, message in cases:
        assert main(args) == 2, args
        assert message in _one_line(capsys), args
    assert not (tmp_path / "o").exists()


def test_command_line_mistakes_are_one_line_with_exit_2(capsys):
    for args, message in [(["train", "--out"], "argument --out: expected one argument"),
                          (["frontier", "--bogus", "3"], "unrecognized arguments: --bogus"),
                          (["eval", "run", "extra"], "unrecognized arguments: extra"),
                          (["dmc"], "the following arguments are required: ACTION"),
                          (["nope"], "invalid choice: 'nope'")]:
        assert main(args) == 2
        err = _one_line(capsys)
        assert message in err and "usage:" not in err, err


def test_top_level_help_is_a_whole_sentence(capsys):
    assert main(["--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "Make Transformer language models cheaper at every stage, and measure what each saving costs." in text


def test_eval_refuses_a_negative_batch_cap(tmp_path, capsys):
    assert main(["train", PRESET, *TINY, "--out", str(tmp_path)]) == 0
    capsys.readouterr()
    assert main(["eval", str(tmp_path), "--max-batches", "-1"]) == 2
    assert "--max-batches must be >= 1" in _one_line(capsys)


def test_device_mistakes_name_what_was_typed(tmp_path, capsys):
    import torch

    assert main(["eval", str(tmp_path), "--device", "foo"]) == 2
    assert "argument --device: foo: not a device; choose auto, cpu, cuda or cuda:N" in _one_line(capsys)
    if torch.cuda.is_available():
        pytest.skip("the CUDA cases need a machine without CUDA")
    for args in (["demo", "--device", "cuda"], ["frontier", "tasks=niah", "--device", "cuda"],
                 ["eval", str(tmp_path), "--device", "cuda"],
                 ["compare", PRESET, "--budget", "1s", "--device", "cuda"]):
        assert main(args) == 2
        assert "--device: cuda: no CUDA device is available on this machine; use --device cpu" in _one_line(capsys)
    assert main(["train", PRESET, "trainer.device=cuda", "--out", str(tmp_path / "x")]) == 2
    assert "trainer.device=cuda: no CUDA device is available on this machine; use trainer.device=cpu" in \
        _one_line(capsys)
    assert not (tmp_path / "x").exists()


def test_documented_api_lines_work_without_importing_submodules():
    code = ("import sys, leanformer; assert 'torch' not in sys.modules, 'import leanformer imports torch'; "
            "assert 'niah' in leanformer.tasks.TASKS; assert callable(leanformer.sparse.apply); "
            "assert 'sparse' in dir(leanformer); print('ok')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]
