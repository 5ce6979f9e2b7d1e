"""CPU probe of the reference recipe's copy warm-up: does the reference model's shape learn to copy by
content from the mixture's copy rows, and does it keep copying as the rows grow? (see benchmarks/README.md,
"Reference checkpoint").

Copy batches only (random tokens whose second half repeats chunks of the first half, loss on the predictable tokens:
``leanformer.reference.mixture.copy_rows``), a fixed number of tokens per step, rows of ``--widths`` tokens for
``--steps`` steps each. Loss ln(vocab) = 8.32 means nothing is copied; the reference model is only useful for
retrieval once this loss falls. Prints the loss every 50 steps and records the curve as ``probe_copy-*.json``.

    PYTHONPATH=src python3 benchmarks/probe_copy.py                                   # 8 layers, d 256: ~25 min
    PYTHONPATH=src python3 benchmarks/probe_copy.py --widths 640 --steps 1400 --layers 2 --d-model 128
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import record  # noqa: E402

from leanformer.models.gpt import GPT, GPTConfig  # noqa: E402
from leanformer.reference.mixture import copy_rows  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--widths", type=int, nargs="+", default=[64, 128, 256, 512], help="row width of each stage")
    ap.add_argument("--steps", type=int, nargs="+", default=[700, 300, 300, 300], help="steps of each stage")
    ap.add_argument("--tokens", type=int, default=2048, help="tokens per step (rows = tokens // width)")
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--rope-theta", type=float, default=50000.0)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    if len(args.steps) != len(args.widths):
        raise SystemExit(f"--steps has {len(args.steps)} values for {len(args.widths)} --widths; give one per width")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    heads = args.d_model // 32
    model = GPT(GPTConfig(vocab_size=args.vocab, d_model=args.d_model, n_layers=args.layers, n_heads=heads,
                          n_kv_heads=args.kv_heads, max_seq_len=max(args.widths), tie_embeddings=True,
                          rope_theta=args.rope_theta))
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)
    rng, t0, step, curve = np.random.default_rng(0), time.perf_counter(), 0, []
    for width, n in zip(args.widths, args.steps):
        for _ in range(n):
            ids, learn = copy_rows(max(1, args.tokens // width), width + 1, args.vocab, [0], rng)
            ids = torch.from_numpy(ids)
            labels = torch.where(torch.from_numpy(learn[:, 1:]), ids[:, 1:], -100)
            _, loss = model(ids[:, :-1], targets=labels)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            if step % 50 == 0:
                point = {"step": step, "width": width, "loss": float(loss.detach()),
                         "seconds": time.perf_counter() - t0}
                curve.append(point)
                print(f"width {width:4d}  step {step:5d}  copy loss {point['loss']:.3f}  {point['seconds']:.0f}s",
                      flush=True)
    path = record("probe_copy", {"config": vars(args), "curve": curve})
    print(f"recorded {path}")


if __name__ == "__main__":
    main()
