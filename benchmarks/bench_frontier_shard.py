"""Sharded frontier sweep: the same ``leanformer frontier`` grid timed on 1 process and on N processes under
``torchrun --standalone --nproc-per-node N`` (each rank takes every N-th cell; with ``device: auto`` rank r uses
``cuda:LOCAL_RANK``), each run into its own fresh SQLite results store.

Recorded: wall seconds of each whole command (interpreter start, model loading, the sweep, the summary),
speedup = t(1) / t(N) and efficiency = speedup / N; and a correctness check: both stores must hold exactly the same
set of ``(cell_key, sample)`` rows, and row by row the same generated output, score, token counts and measured
sparsities (greedy decoding, same device type). Mismatches are counted and reported, never hidden.

The single-process run is the plain command a user runs on one GPU (``python -m leanformer.cli frontier``); the
sharded run pays torchrun's launcher on top, as it does in real use. Before timing, one untimed sweep of the same
grid with one sample per cell (its own scratch store) fills the Triton / Inductor caches and the page cache, so
neither timed run pays kernel compilation that the other one then skips.

Model: a random-weight ``transformers.LlamaForCausalLM`` saved with ``save_pretrained`` next to the reference BPE
tokenizer (``src/leanformer/assets/reference``), loaded by the harness like any HF checkpoint directory (GPU: hidden
512, 8 layers, 8 heads, 2 KV heads, MLP 1408; ``--tiny``: hidden 64, 2 layers). Grid: niah and story_filtering at
2048 and 4096 tokens (``--tiny``: 512), the dense pair, block_topk and vertical_slash prefill, snapkv decode,
sparsities 0.5 and 0.9, 16 samples per cell in batches of 8 (``--tiny``: 4), 24 new tokens, method parameters
scaled down (as in ``configs/frontier/cpu-example.yaml``) so that 0.9 is reachable at these lengths. NVLink
multicast stays off (``NCCL_NVLS_ENABLE=0``, ``TORCH_SYMM_MEM_DISABLE_MULTICAST=1``).

    PYTHONPATH=src python3 benchmarks/bench_frontier_shard.py                           # 2 GPUs: 1 vs 2 processes
    PYTHONPATH=src python3 benchmarks/bench_frontier_shard.py --tiny --device cpu       # CPU check, ~2 min
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import record  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = ROOT / "src" / "leanformer" / "assets" / "reference"
# The reference tokenizer: 4096 BPE pieces, <pad> 0, <bos> 1, <eos> 2.
GPU_MODEL = {"hidden_size": 512, "num_hidden_layers": 8, "num_attention_heads": 8, "num_key_value_heads": 2,
             "intermediate_size": 1408, "max_position_embeddings": 8192}
TINY_MODEL = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
              "intermediate_size": 176, "max_position_embeddings": 2048}
# Scaled from the Sparse Frontier defaults (16K-128K tokens) so that sparsity 0.9 is reachable at 512-4096 tokens.
GPU_PARAMS = {"block_topk": {"block_size": 64}, "vertical_slash": {"block_size": 64, "window": 128, "local": 32},
              "snapkv": {"window": 64, "kernel": 7, "local": 32}}
TINY_PARAMS = {"block_topk": {"block_size": 32}, "vertical_slash": {"block_size": 32, "window": 64, "local": 16},
               "snapkv": {"window": 32, "kernel": 7, "local": 16}}
# Columns that must agree row by row; the first two decide a mismatched row.
COMPARED = ("output", "score", "output_tokens", "prompt_tokens", "prefill_sparsity", "decode_sparsity")
RANK_LINE = re.compile(r"rank (\d+)/(\d+): (\d+) cells, (\d+) samples already done, (\d+) added")


def build_model(path: Path, tiny: bool) -> dict:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    shape = TINY_MODEL if tiny else GPU_MODEL
    config = LlamaConfig(vocab_size=4096, pad_token_id=0, bos_token_id=1, eos_token_id=2, **shape)
    model = LlamaForCausalLM(config)
    model.save_pretrained(path)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(TOKENIZER / name, path / name)
    return {**shape, "vocab_size": 4096, "params": sum(p.numel() for p in model.parameters())}


def grid_config(args, model_dir: Path) -> dict:
    return {"models": [str(model_dir)], "tasks": ["niah", "story_filtering"], "lengths": args.lengths,
            "prefill": ["block_topk", "vertical_slash"], "decode": ["snapkv"], "sparsities": [0.5, 0.9],
            "samples": args.samples, "batch_size": args.batch_size, "max_new_tokens": 24, "seed": 0,
            "device": "cpu" if args.device == "cpu" else "auto", "dtype": "fp32" if args.device == "cpu" else "bf16",
            "chat_template": "off", "progress": False,
            "method_params": TINY_PARAMS if args.tiny else GPU_PARAMS}


def child_env(args) -> dict:
    env = {**os.environ, "NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    if args.device == "cpu":
        # torch takes its intra-op thread count from OMP_NUM_THREADS: N processes x threads = N workers of equal size.
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(args.threads)
    return env


def run_sweep(procs: int, config: Path, store: Path, env: dict, samples: int | None = None) -> dict:
    frontier = ["-m", "leanformer.cli", "frontier", str(config), f"store={store}"]
    if samples is not None:
        frontier += [f"samples={samples}"]
    if procs == 1:
        cmd = [sys.executable, *frontier]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={procs}", *frontier]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-6000:], sep="\n", file=sys.stderr)
        raise SystemExit(f"[bench_frontier_shard] {procs}-process sweep failed (exit {proc.returncode})")
    ranks = [{"rank": int(m[0]), "cells": int(m[2]), "added": int(m[4])} for m in RANK_LINE.findall(proc.stdout)]
    return {"procs": procs, "wall_s": wall, "ranks": sorted(ranks, key=lambda r: r["rank"]),
            "command": " ".join(cmd[1:])}


def read_rows(store: Path) -> dict[tuple[str, int], dict]:
    conn = sqlite3.connect(str(store))
    try:
        cur = conn.execute(f"SELECT cell_key, sample, time_s, {', '.join(COMPARED)} FROM results")
        return {(r[0], r[1]): dict(zip(("time_s", *COMPARED), r[2:])) for r in cur.fetchall()}
    finally:
        conn.close()


def generation_s(store: Path, index_of: dict[str, int], procs: int) -> list[float]:
    """Per rank, the sum of the rows' ``time_s`` (batched generation and scoring, without start-up and loading)."""
    out = [0.0] * procs
    for (key, _), row in read_rows(store).items():
        out[index_of[key] % procs] += row["time_s"]
    return out


def compare(one: Path, many: Path) -> dict:
    """Row sets and row contents of the two stores; every difference is counted."""
    a, b = read_rows(one), read_rows(many)
    common = a.keys() & b.keys()
    per_column = {c: sum(a[k][c] != b[k][c] for k in common) for c in COMPARED}
    mismatched = sum(a[k]["output"] != b[k]["output"] or a[k]["score"] != b[k]["score"] for k in common)
    return {"rows_single": len(a), "rows_sharded": len(b), "only_in_single": len(a.keys() - b.keys()),
            "only_in_sharded": len(b.keys() - a.keys()), "same_row_set": a.keys() == b.keys(),
            "output_or_score_mismatches": mismatched, "mismatches_per_column": per_column}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--procs", "--gpus", dest="procs", type=int, default=2, help="processes of the sharded run")
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--tiny", action="store_true", help="tiny model, one short length, 4 samples (CPU check)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process on CPU")
    p.add_argument("--samples", type=int, default=None, help="samples per cell (default 16; --tiny: 4)")
    p.add_argument("--batch-size", type=int, default=None, help="samples per batch (default 8; --tiny: 2)")
    p.add_argument("--no-warmup", action="store_true", help="skip the untimed one-sample sweep")
    args = p.parse_args()
    args.lengths = [512] if args.tiny else [2048, 4096]
    args.samples = args.samples or (4 if args.tiny else 16)
    args.batch_size = args.batch_size or (2 if args.tiny else 8)
    if args.procs < 2:
        p.error("--procs must be at least 2 (the sharded run is compared with one process)")

    import yaml

    work = Path(tempfile.mkdtemp(prefix="bench_frontier_shard-"))
    print(f"[bench_frontier_shard] work dir {work}", flush=True)
    model_info = build_model(work / "model", args.tiny)
    grid = grid_config(args, work / "model")
    config = work / "frontier.yaml"
    config.write_text(yaml.safe_dump(grid, sort_keys=False))
    env = child_env(args)
    if not args.no_warmup:
        print("[bench_frontier_shard] warm-up: 1 sample per cell, untimed", flush=True)
        run_sweep(1, config, work / "warmup.db", env, samples=1)
    runs = []
    for procs, store in ((1, work / "single.db"), (args.procs, work / f"sharded-{args.procs}.db")):
        print(f"[bench_frontier_shard] {procs} process(es) x {args.device} -> {store.name}", flush=True)
        runs.append({**run_sweep(procs, config, store, env), "store": store.name})
        print(f"[bench_frontier_shard]   wall {runs[-1]['wall_s']:.1f} s", flush=True)
    single, sharded = runs
    speedup = single["wall_s"] / sharded["wall_s"]
    check = compare(work / "single.db", work / f"sharded-{args.procs}.db")
    from leanformer.eval.harness import build_grid, load_config

    # The harness's own grid order: the cell at index i runs on rank i % procs.
    index_of = {cell["key"]: i for i, cell in enumerate(build_grid(load_config(grid)))}
    cells = len(index_of)
    for run in runs:
        run["generation_s_per_rank"] = generation_s(work / run["store"], index_of, run["procs"])
        run["generation_s_max_rank"] = max(run["generation_s_per_rank"])
        run["overhead_s"] = run["wall_s"] - run["generation_s_max_rank"]
    check["complete"] = check["rows_single"] == check["rows_sharded"] == cells * args.samples
    results = {"device": args.device, "procs": args.procs, "threads_per_proc": args.threads if args.device == "cpu"
               else None, "model": "tiny" if args.tiny else "llama-512x8", "model_config": model_info,
               "grid": {k: v for k, v in grid.items() if k != "models"}, "cells": cells,
               "expected_rows": cells * args.samples, "warmup": not args.no_warmup, "runs": runs,
               "speedup": speedup, "efficiency": speedup / args.procs, "correctness": check}
    path = record("frontier_shard", results)
    print(f"\n{'processes':>9}  {'wall s':>8}  {'speedup':>7}  {'efficiency':>10}  {'generation s (slowest rank)':>27}"
          "  rows")
    for run, rows in ((single, check["rows_single"]), (sharded, check["rows_sharded"])):
        x = single["wall_s"] / run["wall_s"]
        print(f"{run['procs']:>9}  {run['wall_s']:>8.1f}  {x:>7.2f}  {100 * x / run['procs']:>9.1f}%  "
              f"{run['generation_s_max_rank']:>27.1f}  {rows}")
    print(f"same (cell, sample) set: {check['same_row_set']} ({cells} cells x {args.samples} samples expected); "
          f"output/score mismatches: {check['output_or_score_mismatches']}; per column: "
          f"{check['mismatches_per_column']}")
    print(f"recorded {path}")


if __name__ == "__main__":
    main()
