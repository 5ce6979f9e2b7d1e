"""Host time block top-k spends before its attention kernel starts (CPU).

    PYTHONPATH=src python benchmarks/bench_block_host.py [--baseline-src /path/to/older/checkout/src]

At 32K tokens on an H200 a block top-k call held ~1.5 ms of GPU work in a ~2.8 ms call at commit 726270d
(results/sparse_prefill_profile-20261129T123239Z.txt): what the host does before the attention kernel is launched
(pooling, scores, the selection, the pattern, the FlexAttention block mask, then ~25 launches) is not hidden behind
GPU work. This times that sequence on tiny CPU tensors, where it is almost all
host overhead (dispatch, Python, allocation), best of five rounds; CUDA adds a launch per kernel on top.
``--baseline-src`` runs the same measurement on another checkout's ``src`` in a subprocess, for a ratio from one run.
Writes ``block_host-*.json``. ``--cuda 32768 131072`` instead times each stage's host cost of a real-shape call on the
GPU (``block_host_cuda-*.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import record  # noqa: E402


def measure(calls: int) -> list[float]:
    """Microseconds per call of the pre-kernel sequence, five rounds (whichever leanformer is importable)."""
    import inspect

    from leanformer.sparse.base import causal_pairs
    from leanformer.sparse.kernels.flex_block import build_block_mask
    from leanformer.sparse.prefill import block_topk as bt
    from leanformer.sparse.prefill.estimate import pooled_block_scores

    torch.set_num_threads(1)
    t, bs, hq, hk = 2048, 128, 8, 2
    q, k = torch.randn(1, hq, t, 16), torch.randn(1, hk, t, 16)
    n = t // bs
    grouped = "groups" in inspect.signature(bt.topk_bias).parameters  # older checkouts: one [NQB, NKB] bias

    def before_kernel():
        bias = bt.topk_bias(n, q.device, hq // hk) if grouped else bt.topk_bias(n, q.device)
        scores = pooled_block_scores(q, k, bs, 0.25, bias=bias)
        budget = torch.tensor([[(1 - 0.9) * causal_pairs(t)]], dtype=torch.float64)
        pattern = bt.block_pattern(scores, int(bt.k_for_budget(budget, n, bs, t)), bs, t)
        return build_block_mask(pattern)

    for _ in range(100):
        before_kernel()
    rounds = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(calls):
            before_kernel()
        rounds.append((time.perf_counter() - t0) / calls * 1e6)
    return rounds


def measure_cuda(t: int, impl: str, calls: int = 50) -> dict:
    """On a GPU at the real shape (32 query heads, 8 KV heads, d = 128, bf16, sparsity 0.9): host microseconds of each
    stage of a block top-k call, as ``BlockTopK.__call__`` runs them (the GPU runs behind, so these are launch and
    Python costs; the last stage counts the kept pairs and then waits for the kernel), against the whole call's wall
    time up to the return (a call does not wait for the GPU), median of ``calls``."""
    import statistics

    from leanformer import sparse
    from leanformer.sparse.base import causal_pairs, check_qkv, pick_impl
    from leanformer.sparse.kernels import run_pattern
    from leanformer.sparse.prefill import block_topk as bt
    from leanformer.sparse.prefill.estimate import pooled_block_scores

    q = torch.randn(1, 32, t, 128, device="cuda", dtype=torch.bfloat16)
    k, v = (torch.randn(1, 8, t, 128, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    bs, n = 128, -(-t // 128)
    stages: dict[str, list[float]] = {}

    def one():
        marks = [("start", time.perf_counter())]
        method = sparse.build_prefill("block_topk", impl=impl)
        check_qkv(q, k, v)
        pick_impl(impl, q, ("flex", "triton"))
        marks.append(("build+checks", time.perf_counter()))
        scores = pooled_block_scores(q, k, bs, 128 ** -0.5, bias=bt.topk_bias(n, q.device, 4))
        marks.append(("scores", time.perf_counter()))
        kk = bt.uniform_k(0.9, n, bs, t)
        marks.append(("budget", time.perf_counter()))
        pattern = bt.block_pattern(scores, kk, bs, t)
        marks.append(("select", time.perf_counter()))
        run_pattern(q, k, v, pattern, None, impl, kernel_options=method.params.kernel_options)
        marks.append(("kernel launch", time.perf_counter()))
        1 - pattern.kept_pairs() / causal_pairs(t)
        torch.cuda.synchronize()
        marks.append(("info, then waiting for the GPU", time.perf_counter()))
        for (_, a), (name, b) in zip(marks, marks[1:]):
            stages.setdefault(name, []).append((b - a) * 1e6)

    for _ in range(5):
        one()
    stages.clear()
    for _ in range(calls):
        torch.cuda.synchronize()
        one()
    walls = []
    for _ in range(calls):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        sparse.prefill_attention(q, k, v, "block_topk", 0.9, impl=impl)
        walls.append((time.perf_counter() - t0) * 1e6)
    out = {name: statistics.median(xs) for name, xs in stages.items()}
    out["whole call (wall)"] = statistics.median(walls)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=3000)
    ap.add_argument("--baseline-src", default=None, help="another checkout's src directory to measure as well")
    ap.add_argument("--measure-only", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--cuda", type=int, nargs="*", default=None, metavar="T",
                    help="instead: host time of each stage of a real-shape call on the GPU at these lengths")
    args = ap.parse_args(argv)
    if args.cuda is not None:
        res = {}
        for t in args.cuda or [32768]:
            for impl in ("triton", "flex"):
                res[f"{t}/{impl}"] = r = measure_cuda(t, impl)
                print(f"T={t} {impl}: " + ", ".join(f"{k} {v:.0f} us" for k, v in r.items()), flush=True)
        print("wrote", record("block_host_cuda", {"stages_us": res, "heads": 32, "kv_heads": 8, "sparsity": 0.9}))
        return
    if args.measure_only:
        print(json.dumps(measure(args.calls)))
        return
    results = {"this": measure(args.calls)}
    if args.baseline_src:
        env = {**os.environ, "PYTHONPATH": str(Path(args.baseline_src).resolve())}
        out = subprocess.run([sys.executable, __file__, "--measure-only", "--calls", str(args.calls)], env=env,
                             check=True, capture_output=True, text=True).stdout
        results["baseline"] = json.loads(out.strip().splitlines()[-1])
        results["baseline_src"] = args.baseline_src
    for key in ("this", "baseline"):
        if key in results:
            print(f"{key}: block top-k before its kernel {min(results[key]):.1f} us of host time per call")
    print("wrote", record("block_host", {**results, "seq_len": 2048, "heads": 8, "kv_heads": 2, "block_size": 128}))


if __name__ == "__main__":
    main()
