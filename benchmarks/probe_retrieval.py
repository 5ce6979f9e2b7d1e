"""CPU probe of the reference recipe at toy scale: can a small ``gpt`` learn multi-key needle retrieval, and does a
warm-up on content-copy batches make it learn fast? (issue 11; see benchmarks/README.md, "Reference checkpoint").

Trains a tiny model on niah samples (``--needles`` needles, one asked; answer-only loss, digits-split reference
tokenizer, answer after '<answer>' with a leading space) mixed with copy batches
(:func:`leanformer.reference.mixture.copy_rows`: random tokens whose second half is copied in chunks from random
places of the first), all copy for the first ``--copy-only-steps``. Every 50 steps it prints the training loss, the
answer loss on a fixed held-out niah batch and the fraction of held-out answers predicted exactly (teacher-forced
argmax on every answer token), and records the curve as ``probe_retrieval-*.json``.

    PYTHONPATH=src python3 benchmarks/probe_retrieval.py --needles 1 --length 160 --layers 2 --copy-only-steps 1300
    PYTHONPATH=src python3 benchmarks/probe_retrieval.py --needles 2 --length 192 --layers 4 --copy-only-steps 1300
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
from leanformer.reference.mixture import TRAIN_SEED_BASE, copy_rows, task_sequence  # noqa: E402
from leanformer.tasks.niah import NIAH  # noqa: E402

TOKENIZER = Path(__file__).resolve().parents[1] / "src" / "leanformer" / "assets" / "reference"


def niah_batch(task, tok, length: int, seeds) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``ids``, training labels (answer only) and the answer mask, right-padded."""
    seqs = [task_sequence(task, tok, length, s, answer_space=True) for s in seeds]
    width = max(len(s) for s, _ in seqs)
    ids = np.full((len(seqs), width), tok.pad_id)
    labels = np.full((len(seqs), width), -100)
    for r, (s, start) in enumerate(seqs):
        ids[r, :len(s)] = s
        labels[r, start:len(s) - 1] = s[start + 1:]
    labels = torch.tensor(labels)
    return torch.tensor(ids), labels, labels >= 0


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
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tok = HFTokenizer.from_pretrained(TOKENIZER)
    task = NIAH(n_needles=args.needles, n_queries=1)
    torch.manual_seed(0)
    heads = max(1, args.d_model // 32)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, d_model=args.d_model, n_layers=args.layers, n_heads=heads,
                          n_kv_heads=heads, max_seq_len=1024, tie_embeddings=True))
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)
    rng = np.random.default_rng(0)
    held_out = niah_batch(task, tok, args.length, range(64))  # evaluation seeds, never trained on
    curve, t0, losses = [], time.perf_counter(), []
    for step in range(args.steps):
        if rng.random() < (1.0 if step < args.copy_only_steps else args.copy_fraction):
            ids, learn = copy_rows(args.batch_size, args.length, tok.vocab_size, [tok.pad_id, tok.eos_id], rng)
            ids = torch.from_numpy(ids)
            labels = torch.where(torch.from_numpy(learn[:, 1:]), ids[:, 1:], -100)
            ids = ids[:, :-1]
        else:
            seeds = range(TRAIN_SEED_BASE + step * 1000, TRAIN_SEED_BASE + step * 1000 + args.batch_size)
            ids, labels, _ = niah_batch(task, tok, args.length, seeds)
        _, loss = model(ids, targets=labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss))
        if (step + 1) % 50 == 0:
            with torch.no_grad():
                ids, labels, mask = held_out
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
