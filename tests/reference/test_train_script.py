"""The reference-checkpoint training script end to end on the CPU at toy size: it trains on the mixture (Shakespeare,
copy and task batches), writes a checkpoint the harness loads, and measures dense accuracy with the harness's
encoder and scorers. (The real run is on a GPU: `bash benchmarks/gpu.sh reference`.)"""

import json
import shutil
from pathlib import Path

from leanformer.reference import train as ref_train

ROOT = Path(__file__).resolve().parents[2]


def test_training_script_runs_and_writes_a_loadable_checkpoint_and_card_data(tmp_path):
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(ROOT / "src" / "leanformer" / "assets" / "reference" / f, tmp_path / f)
    ref_train.main(["--out", str(tmp_path), "--device", "cpu", "--workers", "1", "--no-compile",
                    "model.vocab_size=4096", "model.d_model=32", "model.n_layers=2", "model.n_heads=2",
                    "model.n_kv_heads=1", "model.max_seq_len=1024", "mixture.lengths=[320]",
                    "mixture.tokens_per_batch=2000", "mixture.shakespeare_fraction=0.3", "mixture.copy_fraction=0.3",
                    "mixture.answer_space=true", "max_steps=6", "warmup_steps=2", "eval_tasks=[niah]",
                    "eval_lengths=[320]", "eval_samples=2"])
    report = json.loads((tmp_path / "training.json").read_text())
    assert report["training"]["steps"] == 6 and report["training"]["tokens"] > 0
    acc = report["dense_accuracy"]["niah"]["320"]
    assert len(acc["scores"]) == 2 and 0.0 <= acc["mean"] <= 1.0
    assert len(acc["examples"]) == 2 and {"seed", "output", "gold"} <= set(acc["examples"][0])
    assert not (tmp_path / ".shakespeare-train.npy").exists()
    from leanformer.train.checkpoint import load_model

    model = load_model(tmp_path, device="cpu")
    assert model.config.d_model == 32 and model.config.vocab_size == 4096
    # the model card: accuracy table from the recorded scores, budget, and the command that reproduces the run
    card = (tmp_path / "README.md").read_text()
    assert f"| niah | {acc['mean']:.3f} ± " in card and "320 tokens" in card
    assert "6 steps" in card and "'mixture.lengths=[320]'" in card and "model.d_model=32" in card


def test_card_of_a_folder_without_training_record_is_a_one_line_error(tmp_path, capsys):
    import pytest

    from leanformer.reference import card

    with pytest.raises(SystemExit) as e:
        card.main([str(tmp_path)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "training.json is missing" in err and err.count("\n") == 1


def test_train_then_evaluate_later_and_a_cut_evaluation_resumes(tmp_path, capsys):
    """--skip-eval records the training (no card); --skip-train evaluates later and keeps that record; an evaluation
    cut short leaves the cells measured so far and a card refusal that says how to finish, and resumes from them."""
    import pytest

    from leanformer.reference import card

    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(ROOT / "src" / "leanformer" / "assets" / "reference" / f, tmp_path / f)
    common = ["model.vocab_size=4096", "model.d_model=32", "model.n_layers=2", "model.n_heads=2", "model.n_kv_heads=1",
              "model.max_seq_len=1024", "eval_tasks=[niah]", "eval_lengths=[320, 400]", "eval_samples=2"]
    ref_train.main(["--out", str(tmp_path), "--device", "cpu", "--workers", "1", "--no-compile", "--skip-eval",
                    *common, "mixture.lengths=[320]", "mixture.tokens_per_batch=2000", "max_steps=3",
                    "warmup_steps=1"])
    report = json.loads((tmp_path / "training.json").read_text())
    assert report["training"]["steps"] == 3 and report["dense_accuracy"] == {}
    assert report["evaluation_complete"] is False and not (tmp_path / "README.md").exists()
    with pytest.raises(SystemExit):
        card.main([str(tmp_path)])
    assert "evaluation is incomplete (0 task x length cells" in capsys.readouterr().err

    # an evaluation killed after its first cell: what was measured is on disk, the training record too
    real, calls = ref_train.atomic_write_text, []

    def dies_on_second_cell(path, text):
        calls.append(json.loads(text))
        if len(calls) == 2:  # save before evaluating, then after the first cell
            real(path, text)
            raise KeyboardInterrupt
        real(path, text)

    ref_train.atomic_write_text = dies_on_second_cell
    try:
        with pytest.raises(KeyboardInterrupt):
            ref_train.main(["--out", str(tmp_path), "--device", "cpu", "--skip-train", *common])
    finally:
        ref_train.atomic_write_text = real
    report = json.loads((tmp_path / "training.json").read_text())
    assert list(report["dense_accuracy"]["niah"]) == ["320"] and report["evaluation_complete"] is False
    assert report["training"]["steps"] == 3 and "max_steps=3" in report["overrides"]

    # resuming keeps the measured cell (marked here with scores no model produces) and measures only the rest
    report["dense_accuracy"]["niah"]["320"] = {"mean": 0.25, "scores": [0.25, 0.25]}
    (tmp_path / "training.json").write_text(json.dumps(report))
    ref_train.main(["--out", str(tmp_path), "--device", "cpu", "--skip-train", *common])
    report = json.loads((tmp_path / "training.json").read_text())
    assert list(report["dense_accuracy"]["niah"]) == ["320", "400"] and report["evaluation_complete"] is True
    assert report["dense_accuracy"]["niah"]["320"]["scores"] == [0.25, 0.25]
    assert len(report["dense_accuracy"]["niah"]["400"]["scores"]) == 2
    assert report["training"]["steps"] == 3 and "3 steps" in (tmp_path / "README.md").read_text()


def test_a_compiler_failure_falls_back_to_eager_training_and_is_recorded(tmp_path, monkeypatch):
    import torch

    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(ROOT / "src" / "leanformer" / "assets" / "reference" / f, tmp_path / f)
    seen = {}

    def broken_compile(fn, **kw):
        seen.update(kw)

        def call(*a, **k):
            raise RuntimeError("inductor: no kernel for this shape")
        return call

    monkeypatch.setattr(torch, "compile", broken_compile)
    ref_train.main(["--out", str(tmp_path), "--device", "cpu", "--workers", "1", "--skip-eval",
                    "model.vocab_size=4096", "model.d_model=32", "model.n_layers=2", "model.n_heads=2",
                    "model.n_kv_heads=1", "model.max_seq_len=1024", "mixture.lengths=[320]",
                    "mixture.tokens_per_batch=2000", "max_steps=3", "warmup_steps=1"])
    info = json.loads((tmp_path / "training.json").read_text())["training"]
    assert seen["dynamic"] is True  # one graph for every row width
    assert info["steps"] == 3 and info["compiled"] is False
    assert info["compile_error"] == "step 0: RuntimeError: inductor: no kernel for this shape"


TOY = ["--device", "cpu", "--workers", "1", "--no-compile", "--skip-eval", "model.vocab_size=4096", "model.d_model=32",
       "model.n_layers=2", "model.n_heads=2", "model.n_kv_heads=1", "model.max_seq_len=1024", "mixture.lengths=[320]",
       "mixture.tokens_per_batch=2000", "mixture.copy_fraction=0.3", "warmup_steps=2"]


def _train_subprocess(out: Path, *args: str, crash_at: str | None = None):
    import os
    import subprocess
    import sys

    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    env.pop("LEANFORMER_CRASH_AT", None)
    if crash_at:
        env["LEANFORMER_CRASH_AT"] = crash_at
    return subprocess.run([sys.executable, "-m", "leanformer.reference.train", "--out", str(out), *TOY, *args],
                          env=env, capture_output=True, text=True, timeout=300)


def test_a_bad_override_is_one_line_and_exit_2_with_nothing_written(tmp_path):
    """Run as a script, a config the mixture refuses (parameters for a task it does not draw) prints one line naming
    the value and what is allowed, exits 2, and leaves no folder behind."""
    out = tmp_path / "run"
    r = _train_subprocess(out, "mixture.tasks={niah: 1.0}", "mixture.task_params={qa: {}}")
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert "mixture.task_params: 'qa' is not a task of the mixture; its tasks are niah" in r.stderr
    assert not out.exists()


def test_a_run_killed_mid_training_resumes_to_the_same_weights(tmp_path):
    """SIGKILLed right after its third checkpoint (steps 0-2 done), a rerun continues at step 3 with the optimizer,
    clock and token count it had, and ends with exactly the weights of a run never interrupted."""
    from safetensors.torch import load_file

    whole, cut = tmp_path / "whole", tmp_path / "cut"
    for d in (whole, cut):
        d.mkdir()
        for f in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(ROOT / "src" / "leanformer" / "assets" / "reference" / f, d / f)
    args = ("max_steps=6", "checkpoint_every_s=1e-9")
    assert _train_subprocess(whole, *args).returncode == 0
    assert _train_subprocess(cut, *args, crash_at="ckpt.renamed@3").returncode == -9  # killed
    assert not (cut / "model.safetensors").exists() and (cut / "checkpoints" / "step_00000002").is_dir()
    rerun = _train_subprocess(cut, *args)
    assert rerun.returncode == 0 and "resuming from" in rerun.stdout and "(step 3," in rerun.stdout
    a, b = load_file(str(whole / "model.safetensors")), load_file(str(cut / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch_equal(a[k], b[k]) for k in a)
    ta = json.loads((whole / "training.json").read_text())["training"]
    tb = json.loads((cut / "training.json").read_text())["training"]
    assert ta["steps"] == tb["steps"] == 6 and ta["tokens"] == tb["tokens"]
    assert not (cut / "checkpoints").exists()  # finished: nothing left to resume
    # a rerun with another configuration refuses the leftover state instead of mixing two runs
    assert _train_subprocess(cut, *args, crash_at="ckpt.renamed@2").returncode == -9
    other = _train_subprocess(cut, "max_steps=6", "checkpoint_every_s=1e-9", "lr=1e-3")
    assert other.returncode == 2 and "was written by a run with another configuration" in other.stderr
    assert other.stderr.count("\n") == 1 and "Traceback" not in other.stderr  # one line, nothing else


def torch_equal(x, y) -> bool:
    import torch

    return bool(torch.equal(x, y))


def test_init_from_continues_a_finished_checkpoint_on_new_data(tmp_path, monkeypatch):
    """A second job starts from the first one's weights and tokenizer and reads the data steps after its own."""
    import pytest
    from safetensors.torch import load_file

    first, more = tmp_path / "first", tmp_path / "more"
    first.mkdir()
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(ROOT / "src" / "leanformer" / "assets" / "reference" / f, first / f)
    ref_train.main(["--out", str(first), *TOY, "max_steps=3"])
    steps, real = [], ref_train.in_workers

    def recording(fn, items, *args, **kwargs):
        def seen():
            for item in items:
                steps.append(item[1])
                yield item
        return real(fn, seen(), *args, **kwargs)

    monkeypatch.setattr(ref_train, "in_workers", recording)
    # a vanishing learning rate: the weights written are the ones loaded (both bf16 files), not a fresh init
    ref_train.main(["--out", str(more), *TOY, "max_steps=2", "lr=1e-20", f"init_from={first}"])
    assert steps == [3, 4]  # data steps 3 and 4: not the batches the first job trained on
    assert (more / "tokenizer.json").read_bytes() == (first / "tokenizer.json").read_bytes()
    a, b = load_file(str(first / "model.safetensors")), load_file(str(more / "model.safetensors"))
    assert all(torch_equal(a[k], b[k]) for k in a)
    info = json.loads((more / "training.json").read_text())["training"]
    assert info["steps"] == 2 and info["data_step_offset"] == 3 and info["init_from"] == str(first)
    # its card reproduces it as the chain of both jobs, the second continuing the first's output
    from leanformer.reference import card

    report = json.loads((more / "training.json").read_text())
    report.update(dense_accuracy={"niah": {"320": {"mean": 0.5, "scores": [0.5]}}}, evaluation_complete=True)
    (more / "training.json").write_text(json.dumps(report))
    text = card.card_text(more)
    cmds = [ln for ln in text.splitlines() if ln.startswith("PYTHONPATH=src python3 -m leanformer.reference.train")]
    assert len(cmds) == 2 and "--out OUT1 " in cmds[0] and "max_steps=3" in cmds[0] and "init_from" not in cmds[0]
    assert "--out OUT " in cmds[1] and "init_from=OUT1" in cmds[1] and "max_steps=2" in cmds[1]
    assert "continuing a checkpoint (first) trained for 3 steps" in text
    with pytest.raises(Exception, match="init_from=.*not a finished reference checkpoint"):
        ref_train.main(["--out", str(tmp_path / "bad"), *TOY, "max_steps=1", f"init_from={tmp_path / 'nowhere'}"])


def test_card_names_keyed_answers_task_params_and_the_generation_budget(tmp_path):
    from leanformer.reference import card

    shipped = ROOT / "src" / "leanformer" / "assets" / "reference"
    report = json.loads((shipped / "training.json").read_text())
    report["resolved_config"]["mixture"]["keyed_answers"] = True
    report["resolved_config"]["mixture"]["task_params"] = {}
    (tmp_path / "model.json").write_text((shipped / "model.json").read_text())
    (tmp_path / "training.json").write_text(json.dumps(report))
    text = card.card_text(tmp_path)
    assert "keyed answers (niah and story_retrieval answered item by item" in text and "chained" not in text
    assert "at most 320 new tokens" in text and "training generators' parameters" not in text
    report["resolved_config"]["mixture"]["task_params"] = {"story_retrieval": {"uneven_chapters": True}}
    report["resolved_config"]["mixture"]["keyed_answers"] = False
    report["resolved_config"]["mixture"]["chain_answers"] = True
    (tmp_path / "training.json").write_text(json.dumps(report))
    text = card.card_text(tmp_path)
    assert "chained answers (story_multihop and variable_tracking write out their lookups" in text
    assert "backwards" not in text
    report["resolved_config"]["mixture"].update(recall_fraction=0.2, recall_reverse=0.5)
    (tmp_path / "training.json").write_text(json.dumps(report))
    assert "associative recall 0.2 (0.5 of its queries backwards), the rest" in card.card_text(tmp_path)
    report["resolved_config"]["mixture"].update(chain_tasks=["variable_tracking"])
    (tmp_path / "training.json").write_text(json.dumps(report))
    assert "chained answers (variable_tracking write out" in card.card_text(tmp_path)
    assert "assignment drills" not in text
    report["resolved_config"]["mixture"].update(lookup_fraction=0.25)
    (tmp_path / "training.json").write_text(json.dumps(report))
    assert ("queries backwards), assignment drills 0.25 (variable_tracking's statements, each variable asked by what "
            "it is assigned), the rest") in card.card_text(tmp_path)
    assert "training generators' parameters {'story_retrieval': {'uneven_chapters': True}}" in text
    assert "keyed answers" not in text


def test_card_gives_each_accuracy_its_95_percent_interval(tmp_path):
    from leanformer.eval.store import mean_ci
    from leanformer.reference import card

    shipped = ROOT / "src" / "leanformer" / "assets" / "reference"
    report = json.loads((shipped / "training.json").read_text())
    scores = [1.0] * 20 + [0.0] * 12
    report["dense_accuracy"] = {"niah": {"1024": {"mean": sum(scores) / 32, "scores": scores}},
                                "qa": {"1024": {"mean": 0.0, "scores": [0.0] * 32}}}
    (tmp_path / "model.json").write_text((shipped / "model.json").read_text())
    (tmp_path / "training.json").write_text(json.dumps(report))
    text = card.card_text(tmp_path)
    mean, half = mean_ci(scores)
    assert 0.15 < half < 0.2 and f"| niah | {mean:.3f} ± {half:.3f} |" in text
    assert "| qa | 0.000 ± 0.000 |" in text and "95% Student-t interval" in text


def test_a_deeper_job_starts_from_a_shallower_checkpoint_computing_the_same(tmp_path):
    """``init_from`` with ``model.n_layers`` a multiple of its layers grows the depth with the function kept: the
    grown model's logits equal the source's before training; any other shape change is one clear error."""
    import dataclasses

    import pytest
    import torch

    from leanformer.errors import UserError
    from leanformer.models.gpt import GPT, deepen_state
    from leanformer.train.checkpoint import load_model

    first = tmp_path / "first"
    first.mkdir()
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(ROOT / "src" / "leanformer" / "assets" / "reference" / f, first / f)
    ref_train.main(["--out", str(first), *TOY, "max_steps=2"])
    src = load_model(first).float().eval()
    deep = GPT(dataclasses.replace(src.config, n_layers=3 * src.config.n_layers)).eval()
    deep.load_state_dict(deepen_state(src.state_dict(), src.config.n_layers, deep.config.n_layers))
    ids = torch.randint(0, 4000, (2, 50))
    with torch.no_grad():
        torch.testing.assert_close(deep(ids)[0], src(ids)[0], rtol=1e-5, atol=1e-5)
    more = tmp_path / "deeper"
    ref_train.main(["--out", str(more), *TOY, "max_steps=2", "model.n_layers=4", f"init_from={first}"])
    assert load_model(more).config.n_layers == 4
    with pytest.raises(UserError, match=r"d_model 32 \(model.d_model=64\)"):
        ref_train.main(["--out", str(tmp_path / "wider"), *TOY, "max_steps=2", "model.d_model=64",
                        f"init_from={first}"])
    with pytest.raises(UserError, match=r"n_layers 2 \(model.n_layers=3: fewer, or a multiple, is allowed\)"):
        ref_train.main(["--out", str(tmp_path / "odd"), *TOY, "max_steps=2", "model.n_layers=3",
                        f"init_from={first}"])


def test_a_shallower_job_keeps_evenly_spaced_layers_of_its_checkpoint(tmp_path):
    """``init_from`` with fewer layers keeps evenly spaced layers (the first and last among them) with their weights
    unchanged, and the embeddings, final norm and head; the shallower model is the kept layers run in order."""
    import dataclasses

    import pytest
    import torch

    from leanformer.errors import ConfigError, UserError
    from leanformer.models.gpt import GPT, GPTConfig, shallow_layers, shallow_state
    from leanformer.train.checkpoint import load_model

    assert shallow_layers(8, 4) == [0, 2, 5, 7] and shallow_layers(8, 8) == list(range(8))
    assert shallow_layers(24, 8) == [0, 3, 7, 10, 13, 16, 20, 23] and shallow_layers(5, 1) == [4]
    with pytest.raises(ConfigError, match="between 1 and the 8 layers"):
        shallow_layers(8, 9)
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=97, d_model=32, n_layers=6, n_heads=4, n_kv_heads=2, max_seq_len=64)
    big = GPT(cfg).eval()
    small = GPT(dataclasses.replace(cfg, n_layers=3)).eval()
    small.load_state_dict(shallow_state(big.state_dict(), 6, 3))
    kept = shallow_layers(6, 3)
    assert kept == [0, 2, 5]
    for j, i in enumerate(kept):
        for k, v in small.layers[j].state_dict().items():
            assert torch.equal(v, big.layers[i].state_dict()[k]), (j, k)
    # the shallower model is the kept layers in order: drop the others from the big one and the logits agree
    big.layers = torch.nn.ModuleList(big.layers[i] for i in kept)
    ids = torch.randint(0, cfg.vocab_size, (2, 40))
    with torch.no_grad():
        torch.testing.assert_close(small(ids)[0], big(ids)[0])

    first = tmp_path / "first"
    first.mkdir()
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(ROOT / "src" / "leanformer" / "assets" / "reference" / f, first / f)
    ref_train.main(["--out", str(first), *TOY, "max_steps=2", "model.n_layers=4"])
    ref_train.main(["--out", str(tmp_path / "shallow"), *TOY, "max_steps=2", "model.n_layers=2",
                    f"init_from={first}"])
    assert load_model(tmp_path / "shallow").config.n_layers == 2
    # a config of another depth without model.n_layers= is refused before any work: it would cut or grow silently
    quiet = [x for x in TOY if not x.startswith("model.n_layers=")]
    with pytest.raises(UserError, match=r"has 2 layers and the config \(the defaults\) 4: name the depth, "
                                        r"model.n_layers=2 to continue"):
        ref_train.main(["--out", str(tmp_path / "silent"), *quiet, "max_steps=2", f"init_from={tmp_path / 'shallow'}"])
    assert not (tmp_path / "silent").exists()


def test_a_device_this_machine_lacks_is_a_one_line_error_before_any_work(tmp_path, capsys):
    import pytest
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(SystemExit) as e:
        ref_train.main(["--out", str(tmp_path / "out"), "--skip-train"])  # --device defaults to cuda
    assert e.value.code == 2 and "--device cuda" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_blocks_compiled_apart_train_as_the_eager_model_and_fall_back_on_a_compiler_failure(tmp_path, monkeypatch):
    """compile_scope=blocks compiles each block apart (traced with the eager backend here: the same graphs, no code
    generation) and trains exactly as eager; a backend that fails makes the job record the error and go on eagerly."""
    import pytest

    first = tmp_path / "ref"
    first.mkdir()
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(ROOT / "src" / "leanformer" / "assets" / "reference" / f, first / f)
    compiled = [x for x in TOY if x != "--no-compile"]

    def losses(out):
        rec = json.loads((out / "training.json").read_text())["training"]
        return [r["loss"] for r in rec["log"]], rec

    def job(name, *extra):
        out = tmp_path / name
        out.mkdir()
        for f in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(first / f, out / f)
        ref_train.main(["--out", str(out), *extra, "max_steps=2"])
        return losses(out)

    eager, _ = job("eager", *TOY)
    monkeypatch.setattr(ref_train, "COMPILE_BACKEND", "eager")
    blocks, rec = job("blocks", *compiled, "compile_scope=blocks")
    assert rec["compiled"] and rec["compile_error"] is None
    assert blocks == pytest.approx(eager, rel=1e-5)

    def broken(gm, example_inputs):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(ref_train, "COMPILE_BACKEND", broken)
    fallback, rec = job("fallback", *compiled, "compile_scope=blocks")
    assert not rec["compiled"] and "no compiler here" in rec["compile_error"]
    assert fallback == pytest.approx(eager, rel=1e-5)
