import json
from pathlib import Path

from leanformer.cli import main
from leanformer.config import load_run_config
from leanformer.train.trainer import Trainer

ROOT = Path(__file__).parents[2]
TINY = ["model.d_model=32", "model.d_kv=8", "model.n_heads=4", "model.d_ff=48", "model.n_layers=2",
        "data.seq_len=31", "data.max_tokens=30000", "trainer.batch_size=4", "trainer.eval_batches=2",
        "trainer.log_every=1", "trainer.progress=false", "trainer.device=cpu", "schedule.warmup_steps=2",
        "model.dropout=0.1"]


def events(run_dir, kind):
    return [e for e in map(json.loads, (Path(run_dir) / "metrics.jsonl").read_text().splitlines())
            if e["event"] == kind]


def test_pretrain_resume_then_finetune_with_rouge(tmp_path, capsys):
    cfg = load_run_config(ROOT / "configs" / "t5-shakespeare.yaml", TINY + ["trainer.max_steps=4",
                                                                            "trainer.eval_every=4"])
    Trainer(cfg, tmp_path / "a").fit()
    stopped = load_run_config(ROOT / "configs" / "t5-shakespeare.yaml",
                              TINY + ["trainer.max_steps=4", "trainer.eval_every=4", "trainer.max_seconds=1e-9"])
    Trainer(stopped, tmp_path / "b").fit()
    resumed = load_run_config(tmp_path / "b" / "config.yaml", ["trainer.max_seconds=null"])
    Trainer(resumed, tmp_path / "b").fit()
    la, lb = events(tmp_path / "a", "train"), events(tmp_path / "b", "train")
    assert [e["loss"] for e in la] == [e["loss"] for e in lb] and len(la) == 4  # exact resume, dropout on
    ev = events(tmp_path / "a", "eval")[-1]
    assert 0 <= ev["val_span_accuracy"] <= ev["val_accuracy"] <= 1 and ev["val_loss"] < 6.0

    rc = main(["finetune", str(ROOT / "configs" / "finetune" / "t5-shakespeare.yaml"), f"init={tmp_path / 'a'}",
               "max_steps=3", "max_train_examples=24", "max_eval_examples=4", "max_target_len=8",
               "max_source_len=64", "batch_size=4", "device=cpu", "--out", str(tmp_path / "ft")])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["steps"] == 3 and summary["examples"] == 4 and 0.0 <= summary["rouge_l"] <= 100.0
    preds = (tmp_path / "ft" / "predictions.jsonl").read_text().splitlines()
    assert len(preds) == 4 and "prediction" in json.loads(preds[0])
    from leanformer.train.checkpoint import load_model

    assert load_model(tmp_path / "ft").config.dropout == 0.1
    # the fine-tuned folder is `leanformer eval`-loadable: scored as its fine-tuning was, on the same examples
    assert main(["eval", str(tmp_path / "ft"), "--device", "cpu"]) == 0
    scored = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (scored["step"], scored["examples"]) == (3, 4)
    assert scored["rouge_l"] == summary["rouge_l"] and scored["exact_match"] == summary["exact_match"]
