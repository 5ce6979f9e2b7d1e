"""``leanformer finetune CONFIG [key=value ...] --out DIR``: fine-tune a T5 on a sequence-to-sequence task and
score greedy generations by Rouge-L (nanoT5's fine-tuning stage, Nawrot, 2023; Tk-Instruct recipe: AdamW 5e-5,
constant LR, batch 8, 2 epochs, dropout 0.1, source 1024 / target 128 tokens).

``init`` names the pretrained model: a leanformer run or checkpoint directory (its tokenizer comes along), or
``hf:<path or hub name>`` for a Hugging Face ``T5ForConditionalGeneration`` (tokenizer from the same place unless
``tokenizer`` is set). Batches are a seeded shuffle per epoch; the run writes ``config.yaml``, ``metrics.jsonl``,
the fine-tuned model as a checkpoint (``leanformer eval``-loadable) and ``predictions.jsonl``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import random
import time
from contextlib import nullcontext
from pathlib import Path

from leanformer.config import OptimConfig, ScheduleConfig, cfg


@dataclasses.dataclass(kw_only=True)
class FinetuneConfig:
    init: str = cfg(help="leanformer run/checkpoint directory, or hf:<path or name> of a HF T5")
    tokenizer: str | None = cfg(None, help="override the tokenizer ('byte', 'hf:<name>'); default: init's")
    task: str = cfg("shakespeare_speaker",
                    choices=("shakespeare_speaker", "shakespeare_continue", "natural_instructions"))
    data_dir: str | None = cfg(None, help="natural_instructions: clone of allenai/natural-instructions")
    max_source_len: int = cfg(1024, ge=2)
    max_target_len: int = cfg(128, ge=2)
    max_train_examples: int | None = cfg(None, ge=1)
    max_eval_examples: int | None = cfg(200, ge=1)
    eval_split: str = cfg("test", choices=("validation", "test"))
    dropout: float | None = cfg(0.1, ge=0.0, lt=1.0, help="replaces the model's dropout; null keeps it")
    optim: OptimConfig = dataclasses.field(
        default_factory=lambda: OptimConfig(lr=5e-5, betas=(0.9, 0.999), weight_decay=0.0))
    schedule: ScheduleConfig = dataclasses.field(default_factory=lambda: ScheduleConfig(name="constant",
                                                                                         warmup_steps=0))
    batch_size: int = cfg(8, ge=1)
    eval_batch_size: int = cfg(32, ge=1)
    epochs: float = cfg(2.0, gt=0.0)
    max_steps: int | None = cfg(None, ge=1, help="stop earlier than the epochs")
    device: str = "auto"
    precision: str = cfg("auto", choices=("auto", "fp32", "bf16"))
    log_every: int = cfg(10, ge=1)
    seed: int = cfg(0, ge=0)


def load_init(spec: str, tokenizer: str | None):
    """(T5 model, tokenizer) from a leanformer run/checkpoint or ``hf:<path or name>``."""
    from leanformer.data.tokenizers import get_tokenizer
    from leanformer.errors import UserError
    from leanformer.models.t5 import T5

    if spec.startswith("hf:"):
        return T5.from_pretrained_hf(spec[3:]), get_tokenizer(tokenizer or spec)
    from leanformer.train.checkpoint import load_model, load_tokenizer

    model = load_model(spec)
    if not isinstance(model, T5):
        raise UserError(f"init={spec!r} holds a {type(model).__name__}; fine-tuning needs a t5 model")
    return model, get_tokenizer(tokenizer) if tokenizer else load_tokenizer(spec)


def tokenizer_spec(c: FinetuneConfig) -> str:
    """The tokenizer string to record beside the fine-tuned weights."""
    if c.tokenizer or c.init.startswith("hf:"):
        return c.tokenizer or c.init
    from leanformer.train.checkpoint import resolve_checkpoint

    return json.loads((resolve_checkpoint(c.init) / "model.json").read_text()).get("tokenizer", "byte")


def collate(examples, tok, max_source: int, max_target: int, rng: random.Random | None = None) -> dict:
    """Pad a list of examples into ``input_ids``/``attention_mask [B, S]`` and ``labels [B, T]`` (-100 = pad);
    texts truncated to leave room for EOS. Training picks a reference with ``rng``, evaluation the first."""
    import torch

    src = [tok.encode(e.source)[:max_source - 1] + [tok.eos_id] for e in examples]
    tgt = [tok.encode(rng.choice(e.references) if rng else e.references[0])[:max_target - 1] + [tok.eos_id]
           for e in examples]
    s, t = max(map(len, src)), max(map(len, tgt))
    ids = torch.full((len(src), s), tok.pad_id, dtype=torch.long)
    labels = torch.full((len(src), t), -100, dtype=torch.long)
    for i, (a, b) in enumerate(zip(src, tgt)):
        ids[i, :len(a)] = torch.tensor(a)
        labels[i, :len(b)] = torch.tensor(b)
    return {"input_ids": ids, "attention_mask": ids != tok.pad_id, "labels": labels}


def evaluate_generation(model, examples, tok, c: FinetuneConfig, device, autocast_dtype=None) -> tuple[dict, list]:
    """Greedy generation for each example; mean Rouge-L (best over references) and exact match, in percent."""
    import torch

    from leanformer.finetune_tasks.rouge import exact_match, rouge_l_max

    model.eval()
    ctx = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else nullcontext()
    rows = []
    for i in range(0, len(examples), c.eval_batch_size):
        chunk = examples[i:i + c.eval_batch_size]
        b = collate(chunk, tok, c.max_source_len, c.max_target_len)
        with ctx:
            out = model.generate(b["input_ids"].to(device), c.max_target_len,
                                 attention_mask=b["attention_mask"].to(device), eos_id=tok.eos_id)
        for e, ids in zip(chunk, out.tolist()):
            ids = ids[:ids.index(tok.eos_id)] if tok.eos_id in ids else ids
            pred = tok.decode(ids).strip()
            rows.append({"source": e.source, "prediction": pred, "references": list(e.references),
                         "rouge_l": rouge_l_max(pred, e.references),
                         "exact": exact_match(pred, e.references)})
    n = max(len(rows), 1)
    return {"rouge_l": 100 * sum(r["rouge_l"] for r in rows) / n,
            "exact_match": 100 * sum(r["exact"] for r in rows) / n, "examples": len(rows)}, rows


def evaluate_finetuned(raw: dict, ckpt, split: str, batch_size: int, max_batches: int | None, device) -> dict:
    """Score the fine-tuned checkpoint ``ckpt`` of a run whose config is ``raw`` as :func:`finetune` does: greedy
    generations on ``split`` of its task, ``max_batches`` x ``batch_size`` examples (default: max_eval_examples)."""
    import torch

    from leanformer.config import from_dict
    from leanformer.finetune_tasks import load_task
    from leanformer.train.checkpoint import load_model, load_tokenizer

    c = dataclasses.replace(from_dict(FinetuneConfig, raw), eval_batch_size=batch_size)
    model, tok = load_model(ckpt, device=str(device)), load_tokenizer(ckpt)
    limit = max_batches * batch_size if max_batches else c.max_eval_examples
    examples = load_task(c.task, split, c.data_dir, limit, c.seed)
    autocast = torch.bfloat16 if device.type == "cuda" else None
    metrics, _ = evaluate_generation(model, examples, tok, c, device, autocast)
    return metrics


def finetune(c: FinetuneConfig, out_dir) -> dict:
    import torch

    from leanformer.config import save_yaml
    from leanformer.errors import UserError
    from leanformer.finetune_tasks import load_task
    from leanformer.reliability import check_output_dir, removed_if_left_empty, training_bytes
    from leanformer.train.checkpoint import save_checkpoint
    from leanformer.train.device import resolve_device
    from leanformer.train.loggers import MetricsLog
    from leanformer.train.optim import build_optimizer
    from leanformer.train.schedules import lr_multiplier

    device = resolve_device(c.device, "device")
    torch.manual_seed(c.seed)
    bf16 = c.precision == "bf16" or (c.precision == "auto" and device.type == "cuda")
    autocast = torch.bfloat16 if bf16 else None
    out = Path(out_dir)
    with removed_if_left_empty(out):  # a run refused before any work leaves no empty folder behind
        check_output_dir(out, 0, "the fine-tuned checkpoint")  # read-only: before any work
        model, tok = load_init(c.init, c.tokenizer)
        # The fine-tuned weights are written at the end: a full disk must fail now, not then.
        check_output_dir(out, training_bytes(model, keep_last=0, optimizer_states=0), "the fine-tuned checkpoint")
        train = load_task(c.task, "train", c.data_dir, c.max_train_examples, c.seed)
        evals = load_task(c.task, c.eval_split, c.data_dir, c.max_eval_examples, c.seed)
        if not train:
            raise UserError(f"task {c.task!r} has no training examples")
    save_yaml(c, out / "config.yaml")
    if c.dropout is not None:
        model.config = dataclasses.replace(model.config, dropout=c.dropout)
        for m in model.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = c.dropout
            elif hasattr(m, "dropout") and isinstance(m.dropout, float):
                m.dropout = c.dropout
    model.to(device)
    steps_per_epoch = math.ceil(len(train) / c.batch_size)
    total = math.ceil(c.epochs * steps_per_epoch)
    total = min(total, c.max_steps) if c.max_steps else total
    opt = build_optimizer(model, c.optim)
    rng = random.Random(c.seed)
    log = MetricsLog(out)  # a previous run's lines in this folder move to metrics.replaced.jsonl
    log.start(None)
    model.train()
    t0, order = time.perf_counter(), []
    for step in range(total):
        if step % steps_per_epoch == 0:
            order = random.Random(c.seed * 1000 + step // steps_per_epoch).sample(range(len(train)), len(train))
        idx = order[(step % steps_per_epoch) * c.batch_size:][:c.batch_size]
        batch = {k: v.to(device) for k, v in collate([train[i] for i in idx], tok, c.max_source_len,
                                                      c.max_target_len, rng).items()}
        lr = c.optim.lr * lr_multiplier(c.schedule, step, step / total)
        for g in opt.param_groups:
            g["lr"] = lr
        with torch.autocast(device.type, dtype=autocast) if autocast else nullcontext():
            loss, _ = model.compute_loss(batch)
        loss.backward()
        if c.optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), c.optim.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if (step + 1) % c.log_every == 0 or step == 0:
            log.log({"event": "train", "step": step + 1, "loss": float(loss.detach()), "lr": lr})
    train_s = time.perf_counter() - t0
    metrics, rows = evaluate_generation(model, evals, tok, c, device, autocast)
    log.log({"event": "eval", "step": total, **{f"{c.eval_split}_{k}": v for k, v in metrics.items()}})
    with open(out / "predictions.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    save_checkpoint(out, total, model, None, {"task": c.task, **metrics}, tokenizer_spec(c))
    return {"run_dir": str(out), "steps": total, "train_s": round(train_s, 2), **metrics}


def add_parser(sub, name: str) -> argparse.ArgumentParser:
    from leanformer.cli_overrides import add_config_arguments

    p = sub.add_parser(name, help="fine-tune a T5 on a seq2seq task; report Rouge-L", description=__doc__)
    add_config_arguments(p, help="a YAML config (e.g. configs/finetune/t5-shakespeare.yaml) and overrides like "
                                 "init=runs/t5, in any order among the flags")
    p.add_argument("--out", default=None, help="output directory (default: runs/<config name>)")
    return p


def run(args) -> int:
    from leanformer.cli_overrides import build_config, config_arguments

    (config,), overrides = config_arguments(args)
    c = build_config(FinetuneConfig, config, overrides)
    out = Path(args.out) if args.out else Path("runs") / (Path(config).stem if config else "finetune")
    print(json.dumps(finetune(c, out)))
    return 0
