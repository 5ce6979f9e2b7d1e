"""``leanformer eval RUN_OR_CHECKPOINT [--split test]``: bits per byte and perplexity, printed as one JSON object.

A run of ``leanformer finetune`` is scored as its fine-tuning was: greedy generations on its task's ``--split``,
Rouge-L and exact match (up to ``--max-batches`` x ``--batch-size`` examples; default: the run's
``max_eval_examples``).
"""

from __future__ import annotations

import argparse
import json


def add_parser(sub, name: str) -> argparse.ArgumentParser:
    from leanformer.cli_overrides import add_device_argument

    p = sub.add_parser(name, help="evaluate a trained LM (bits per byte, perplexity) on a data split",
                       description=__doc__)
    p.add_argument("path", help="run directory or checkpoint directory")
    p.add_argument("--split", default="test", choices=("train", "validation", "test"))
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-batches", type=int, default=None, help="cap on evaluation batches (default: whole split)")
    add_device_argument(p)
    return p


def evaluate_run(path, split: str = "test", batch_size: int = 8, max_batches: int | None = None,
                 device: str = "auto") -> dict:
    """Evaluate a run/checkpoint on its own data source and tokenizer; returns the metrics dict."""
    from pathlib import Path

    import torch

    from leanformer.config import load_run_config, load_yaml
    from leanformer.data.packing import split_tokens
    from leanformer.errors import UserError
    from leanformer.train.checkpoint import load_model, load_tokenizer, resolve_checkpoint
    from leanformer.train.device import resolve_device

    if batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {batch_size}")
    if max_batches is not None and max_batches < 1:
        raise UserError(f"--max-batches must be >= 1 (or left out for the whole split), got {max_batches}")
    dev = resolve_device(device, "--device")
    ckpt = resolve_checkpoint(path)
    run_dir = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else Path(path)
    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"{path} has no config.yaml beside its checkpoint; cannot tell which data to evaluate on")
    step = json.loads((ckpt / "state.json").read_text())["step"] if (ckpt / "state.json").is_file() else None
    raw = load_yaml(run_dir / "config.yaml")
    if "model" not in raw and "init" in raw:  # a fine-tuning run: its own task and metric
        from leanformer.train.finetune import evaluate_finetuned

        metrics = evaluate_finetuned(raw, ckpt, split, batch_size, max_batches, dev)
        return {"split": split, "checkpoint": str(ckpt), "step": step, **metrics}
    cfg = load_run_config(run_dir / "config.yaml")
    model = load_model(ckpt, device=str(dev))
    tok = load_tokenizer(ckpt)
    d = cfg.data
    tokens = split_tokens(d, tok, (split,))[split]
    dtype = torch.bfloat16 if dev.type == "cuda" else None
    # The family's objective evaluates it (causal LM by default; DMC adds the compression ratio reached).
    metrics = model.objective(tok, d.seq_len).evaluate(model, tokens, batch_size, max_batches, dev, dtype)
    return {"split": split, "checkpoint": str(ckpt), "step": step, **metrics}


def run(args) -> int:
    print(json.dumps(evaluate_run(args.path, args.split, args.batch_size, args.max_batches, args.device)))
    return 0
