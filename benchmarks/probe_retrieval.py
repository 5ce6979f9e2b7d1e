"""CPU probe of the reference recipe at toy scale: can a small ``gpt`` learn multi-key needle retrieval, and does a
warm-up on content-copy batches make it learn fast? (see benchmarks/README.md, "Reference model").

Trains a tiny model on niah samples (``--needles`` needles, one asked; answer-only loss, digits-split reference
tokenizer, answer after '<answer>' with a leading space) mixed with copy batches (random tokens whose second half is
copied in chunks from random places of the first), all copy for the first ``--copy-only-steps`` — both laid out by
the reference mixture's own ``make_batch``. Every 50 steps it prints the training loss, the
answer loss on a fixed held-out niah batch and the fraction of held-out answers predicted exactly (teacher-forced
argmax on every answer token), and records the curve as ``probe_retrieval-*.json``.

    PYTHONPATH=src python3 benchmarks/probe_retrieval.py --needles 1 --length 160 --layers 2 --copy-only-steps 1300
    PYTHONPATH=src python3 benchmarks/probe_retrieval.py --needles 2 --length 192 --layers 4 --copy-only-steps 1300
    # the reference model's shape and copy warm-up (64..512-token rows), then two-needle niah
    PYTHONPATH=src python3 benchmarks/probe_retrieval.py --needles 2 --length 192 --layers 8 --d-model 256 \
        --kv-heads 2 --rope-theta 50000 --lr 2e-3 --copy-only-steps 1750 --copy-widths 64 64 128 256 512 --steps 2150
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import record  # noqa: E402

from leanformer.data import HFTokenizer  # noqa: E402
from leanformer.models.gpt import GPT, GPTConfig  # noqa: E402
from leanformer.reference.mixture import TRAIN_SEED_BASE, MixtureConfig, make_batch  # noqa: E402
from leanformer.tasks.niah import NIAH  # noqa: E402

TOKENIZER = Path(__file__).resolve().parents[1] / "src" / "leanformer" / "assets" / "reference"


def batch(kind: str, mix: MixtureConfig, tok, task, n: int, seeds, tokens_seed: int = 0, width: int | None = None):
    """A batch laid out by the reference mixture itself (:func:`make_batch`): niah samples (answer-only labels) or
    copy rows (``width`` tokens wide if given); returns ``input_ids`` and ``labels`` tensors."""
    plan = {"kind": kind, "length": mix.lengths[0], "n": n}
    if width:
        plan.update(length=width, width=width)
    plan.update({"items": [("niah", s) for s in seeds]} if kind == "tasks" else {"tokens_seed": tokens_seed})
    b = make_batch(plan, mix, tok, np.zeros(1, dtype=np.int64), {"niah": task}, tok.pad_id)
    return torch.from_numpy(b["input_ids"]), torch.from_numpy(b["labels"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--needles", type=int, default=1)
    ap.add_argument("--length", type=int, default=160, help="niah prompt length in tokens")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--copy-only-steps", type=int, default=1300)
    ap.add_argument("--copy-fraction", type=float, default=0.3, help="share of copy batches after the warm-up")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--kv-heads", type=int, default=None, help="key/value heads (default: as many as query heads)")
    ap.add_argument("--rope-theta", type=float, default=10000.0)
    ap.add_argument("--copy-widths", type=int, nargs="+", default=None,
                    help="copy-only steps in rows of these widths, in stages of equal steps (the reference recipe's "
                         "copy_warmup_lengths), --copy-tokens tokens per step")
    ap.add_argument("--copy-tokens", type=int, default=2048)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tok = HFTokenizer.from_pretrained(TOKENIZER)
    task = NIAH(n_needles=args.needles, n_queries=1)
    torch.manual_seed(0)
    heads = max(1, args.d_model // 32)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, d_model=args.d_model, n_layers=args.layers, n_heads=heads,
                          n_kv_heads=args.kv_heads or heads, max_seq_len=1024, tie_embeddings=True,
                          rope_theta=args.rope_theta))
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)
    rng = np.random.default_rng(0)
    mix = MixtureConfig(lengths=[args.length], answer_margin=40, answer_only=True, answer_space=True)
    held_out = batch("tasks", mix, tok, task, 64, range(64))  # evaluation seeds, never trained on
    curve, t0, losses = [], time.perf_counter(), []
    for step in range(args.steps):
        staged = args.copy_widths and step < args.copy_only_steps
        if staged:
            width = args.copy_widths[step * len(args.copy_widths) // args.copy_only_steps]
            ids, labels = batch("copy", mix, tok, task, args.copy_tokens // width, (), tokens_seed=step, width=width)
        elif rng.random() < (1.0 if step < args.copy_only_steps else args.copy_fraction):
            ids, labels = batch("copy", mix, tok, task, args.batch_size, (), tokens_seed=step)
        else:
            seeds = range(TRAIN_SEED_BASE + step * 1000, TRAIN_SEED_BASE + step * 1000 + args.batch_size)
            ids, labels = batch("tasks", mix, tok, task, args.batch_size, seeds)
        _, loss = model(ids, targets=labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss))
        if (step + 1) % 50 == 0:
            with torch.no_grad():
                ids, labels = held_out
                mask = labels >= 0
                logits = model(ids)
                answer_loss = float(F.cross_entropy(logits[mask], labels[mask]))
                right = (logits.argmax(-1) == labels) | ~mask
                exact = float(right.all(1).float().mean())
            point = {"step": step + 1, "train_loss": float(np.mean(losses[-50:])), "answer_loss": answer_loss,
                     "exact": exact, "seconds": time.perf_counter() - t0}
            curve.append(point)
            print(f"step {step + 1:5d}  train {point['train_loss']:.3f}  answer loss {answer_loss:.3f}  "
                  f"exact {exact:.3f}  {point['seconds']:.0f}s", flush=True)
    path = record("probe_retrieval", {"config": vars(args), "curve": curve})
    print(f"recorded {path}")


if __name__ == "__main__":
    main()
