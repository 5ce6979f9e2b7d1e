"""Batched sparse cells in the study: samples/s of the frontier sweep at batch 1 against one engine batch per cell.

    PYTHONPATH=src python benchmarks/bench_sweep_batch.py                                  # shipped reference, 8K
    PYTHONPATH=src python benchmarks/bench_sweep_batch.py --model runs/gpu/reference-long-continue --lengths 32768

The same slice of a frontier grid (dense, sparse prefill and sparse decode cells on the given tasks and lengths) runs
twice through :func:`leanformer.eval.harness.run_sweep`, once at ``batch_size=1`` and once at ``--batch`` (each cell
one engine batch: prompts prefilled together right-padded, attention on each row's own tokens, all rows decoded
together), after a warm-up sweep of each (its first
task, at its batch size) that compiles the kernels. Throughput is samples per second of generation (the store's
``time_s``: prompts are made on the CPU outside it), per cell kind and overall; the outputs of the two runs are
compared sample by sample (bf16 on a GPU: a batched step may round differently, so the agreement is reported, not
asserted). ``--prefill-alone`` runs the batch a third time with each prompt prefilled alone (the engine's
``prefill_tokens=1``): what prefilling a cell's prompts together adds, in the same run. Target (the long-context
study's): >= 5x the samples/s of batch 1.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import record  # noqa: E402

TARGET = 5.0


def sweep(args, store: Path, batch: int, samples: int, tasks: list[str] | None = None,
          prefill_tokens: int | None = None) -> list[dict]:
    from leanformer.eval import harness
    from leanformer.eval.store import ResultsStore

    c = harness.load_config({
        "models": [args.model], "tasks": tasks or args.tasks, "lengths": args.lengths, "samples": samples,
        "prefill": args.prefill, "decode": args.decode, "sparsities": [args.sparsity], "batch_size": batch,
        "max_new_tokens": args.max_new_tokens, "device": args.device, "dtype": args.dtype, "engine": "on",
        "chat_template": "off", "store": str(store), "progress": False, "method_params": METHOD_PARAMS,
        "prefill_tokens": prefill_tokens,
        **({"tokenizer": args.tokenizer} if args.tokenizer else {})})
    harness.run_sweep(c)
    with ResultsStore(c.store) as s:
        return s.rows()


# 64-token tiles for the line methods, as configs/frontier/long.yaml (they reach high sparsity at 4K-8K there)
METHOD_PARAMS = {"vertical_slash": {"block_size": 64}, "flexprefill": {"block_size": 64, "query_aware": False}}


def kind(row: dict) -> str:
    if row["prefill_method"] != "dense":
        return "prefill:" + row["prefill_method"]
    return "decode:" + row["decode_method"] if row["decode_method"] != "dense" else "dense"


def throughput(rows: list[dict]) -> dict[str, float]:
    """Samples per second of generation per cell kind and ``all``."""
    seconds, count = defaultdict(float), defaultdict(int)
    for r in rows:
        for k in (kind(r), "all"):
            seconds[k] += r["time_s"]
            count[k] += 1
    return {k: count[k] / seconds[k] for k in count}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="leanformer:reference")
    ap.add_argument("--tasks", nargs="+", default=["niah", "story_retrieval"])
    ap.add_argument("--lengths", type=int, nargs="+", default=[8192])
    ap.add_argument("--prefill", nargs="*", default=["block_topk", "vertical_slash"])
    ap.add_argument("--decode", nargs="*", default=["snapkv", "quest"])
    ap.add_argument("--sparsity", type=float, default=0.9)
    ap.add_argument("--samples", type=int, default=24, help="samples per cell (and the batch of the batched run)")
    ap.add_argument("--batch", type=int, default=None, help="batched run's batch size (default: --samples)")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bf16")
    ap.add_argument("--tokenizer", default=None, help="the sweep's tokenizer (default: the model's own)")
    ap.add_argument("--prefill-alone", action="store_true",
                    help="also run the batch with each prompt prefilled alone (prefill_tokens=1): what prefilling "
                         "a cell's prompts together adds, in the same run")
    ap.add_argument("--out", default=None, help="result JSON folder (default: $OUT, else benchmarks/results)")
    args = ap.parse_args(argv)
    batch = args.batch or args.samples
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for b in (1, batch):  # compile and autotune every kernel both runs launch, at their batch sizes
            sweep(args, tmp / f"warm{b}.db", b, min(batch, 2) if b == 1 else batch, args.tasks[:1])
        rows = {b: sweep(args, tmp / f"b{b}.db", b, args.samples) for b in (1, batch)}
        if args.prefill_alone:
            alone = throughput(sweep(args, tmp / "alone.db", batch, args.samples, prefill_tokens=1))
    rate = {b: throughput(r) for b, r in rows.items()}
    outs = {b: {(r["cell_key"], r["sample"]): r["output"] for r in rs} for b, rs in rows.items()}
    same = sum(outs[1][k] == outs[batch].get(k) for k in outs[1])
    result = {"model": args.model, "lengths": args.lengths, "tasks": args.tasks, "sparsity": args.sparsity,
              "samples_per_cell": args.samples, "batch": batch, "samples_per_s": {str(b): v for b, v in rate.items()},
              "speedup": {k: rate[batch][k] / rate[1][k] for k in rate[1]},
              "same_outputs": same, "compared": len(outs[1]), "target": TARGET}
    if args.prefill_alone:
        result["speedup_prefill_alone"] = {k: alone[k] / rate[1][k] for k in rate[1]}
    # per task: a sparse prefill method runs once per prompt length of a cell, so a task whose prompts vary in length
    # makes more calls (niah: ~2 lengths in 24 prompts; story retrieval: ~12)
    for task in args.tasks:
        by = {b: throughput([r for r in rs if r["task"] == task]) for b, rs in rows.items()}
        cells = defaultdict(set)
        for r in rows[batch]:
            if r["task"] == task:
                cells[r["cell_key"]].add(r["prompt_tokens"])
        result.setdefault("speedup_by_task", {})[task] = {k: by[batch][k] / by[1][k] for k in by[1]}
        result.setdefault("prompt_lengths_per_cell", {})[task] = sum(map(len, cells.values())) / max(len(cells), 1)
    path = record("sweep_batch", result, args.out)
    print(f"{'cells':22s} {'batch 1 samples/s':>18s} {f'batch {batch}':>12s} {'speedup':>8s}")
    for k in sorted(rate[1]):
        alone_col = f"  (prompts alone {result['speedup_prefill_alone'][k]:.2f}x)" if args.prefill_alone else ""
        print(f"{k:22s} {rate[1][k]:18.2f} {rate[batch][k]:12.2f} {result['speedup'][k]:7.2f}x{alone_col}")
    for task, sp in result["speedup_by_task"].items():
        print(f"{task}: {sp['all']:.2f}x overall, {result['prompt_lengths_per_cell'][task]:.1f} prompt lengths a cell")
    print(f"same outputs in {same} of {len(outs[1])} samples; target >= {TARGET:g}x overall; {path}")
    return result


if __name__ == "__main__":
    main()
