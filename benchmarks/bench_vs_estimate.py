"""The fused window-score estimation of vertical-slash and FlexPrefill alone, per launch configuration.

    PYTHONPATH=src python benchmarks/bench_vs_estimate.py      # 32K and 128K, 32 query / 8 KV heads, d 128, bf16

``vs_scores_triton`` (two launches: each window row's softmax statistics, then its column and diagonal sums; see
``leanformer/sparse/kernels/vs_estimate.py``) at vertical-slash's window (256 queries) and FlexPrefill's (512
queries and its 128-row tail), at every ``--configs`` setting of its tiles (``BM`` window rows x ``BN`` keys, warps,
stages; ``TRANSPOSE=1``: the sums on the transposed tile). Each setting is checked against the default's outputs
first (fp32 sums in another order: relative error under 1e-4), then timed in a CUDA graph. The floor beside each row
is its matrix work (two ``W x T x D`` products per query head) at 800 TFLOP/s; the ``plan`` columns say how many
programs the launch has. The fastest setting per window and length is printed last: the one to make
``vs_estimate.DEFAULT_CONFIG``. ``--parts`` also times the default's launches one by one (``vs_estimate.launches``):
the statistics launch, then the sums launch whole, with only its column sums and with only its diagonal sums, so
what each part costs shows.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import bench, checked_settings, graphed, record  # noqa: E402

from leanformer.sparse.kernels import vs_estimate  # noqa: E402

# BM <= BN: a window row's skew wraps at most once in a tile; the default's tile is transposed (TRANSPOSE=1), so every
# setting but TRANSPOSE=0 is too
CONFIGS = ["default", "BM=32,BN=64", "BM=64,BN=128", "BM=128,BN=128", "BM=64,BN=64,num_warps=8",
           "BM=64,BN=128,num_warps=8", "BM=128,BN=128,num_warps=8", "BM=64,BN=64,num_stages=2", "TRANSPOSE=0",
           "TRANSPOSE=0,num_stages=2"]
WINDOWS = {"vertical_slash": (256, 0), "flexprefill": (512, 128)}


def parse_config(text: str) -> dict:
    return checked_settings(text, vs_estimate.DEFAULT_CONFIG, "--configs")


def _rel(a, b) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def measure(args, t: int, method: str, dev, wrap, g) -> list[dict]:
    w, tail = WINDOWS[method]
    q = torch.randn(1, args.heads, t, args.dim, device=dev, dtype=torch.bfloat16, generator=g)
    k = torch.randn(1, args.kv_heads, t, args.dim, device=dev, dtype=torch.bfloat16, generator=g)
    scale = args.dim ** -0.5
    want = vs_estimate.vs_scores_triton(q, k, w, scale, tail)
    floor_us = 2 * 2 * args.heads * min(w, t) * t * args.dim / 800e12 * 1e6
    rows = []
    for text in args.configs:
        cfg = parse_config(text)
        try:
            full = vs_estimate.resolve_config(cfg)
        except ValueError as e:
            print(f"T={t:>6} {method:>14} {text:>28}: {e}")
            continue
        try:
            got = vs_estimate.vs_scores_triton(q, k, w, scale, tail, config=cfg)
        except Exception as e:  # a setting the compiler refuses (e.g. out of shared memory): reported, not timed
            print(f"T={t:>6} {method:>14} {text:>28}: failed ({type(e).__name__}: {str(e)[:200]})", flush=True)
            rows.append({"seq_len": t, "method": method, "config": text, "error": f"{type(e).__name__}: {e}"[:500]})
            continue
        err = max(_rel(x, y) for x, y in zip(got, want) if x is not None)
        nrb, nkb, kps, nsplit = vs_estimate.plan(args.heads, min(w, t), t, q.device, full)
        row = {"seq_len": t, "method": method, "window": w, "tail": tail, "config": text, "resolved": full,
               "rel_err": err, "programs": args.heads * nrb * nsplit, "splits": nsplit, "floor_us": floor_us}
        if err < 1e-4:
            call = lambda cfg=cfg: vs_estimate.vs_scores_triton(q, k, w, scale, tail, config=cfg)  # noqa: E731
            row["us"] = bench(wrap(call), warmup=1, repeat=args.repeat) * 1e6
            print(f"T={t:>6} {method:>14} {text:>28}: {row['us']:8.1f} us (floor {floor_us:.1f}; {row['programs']} "
                  f"programs, {nsplit} key shares)", flush=True)
        else:
            print(f"T={t:>6} {method:>14} {text:>28}: outputs differ (rel {err:.1e}): not timed", flush=True)
        rows.append(row)
    if args.parts:
        rows.append(parts(args, t, method, q, k, w, tail, scale, floor_us, wrap))
    return rows


PARTS = ("stats", "sums", "sums_vertical", "sums_slash")


def parts(args, t: int, method: str, q, k, w: int, tail: int, scale: float, floor_us: float, wrap) -> dict:
    """The default setting's launches timed one by one (``vs_estimate.launches``): the statistics launch with its
    share merge, then the sums launch whole, with only its column sums, and with only its diagonal sums."""
    steps = vs_estimate.launches(q, k, w, scale, tail)
    steps["stats"]()
    row = {"seq_len": t, "method": method, "window": w, "tail": tail, "config": "default, by launch",
           "floor_us": floor_us}
    for name in PARTS:
        row[f"{name}_us"] = bench(wrap(steps[name]), warmup=1, repeat=args.repeat) * 1e6
    print(f"T={t:>6} {method:>14} by launch: " + ", ".join(f"{n} {row[n + '_us']:.1f} us" for n in PARTS), flush=True)
    return row


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[32768, 131072])
    ap.add_argument("--methods", nargs="+", default=list(WINDOWS), choices=list(WINDOWS))
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--configs", nargs="+", default=CONFIGS,
                    help='tile settings, each "default" or e.g. "BM=128,BN=64,num_warps=8" (keys of DEFAULT_CONFIG)')
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--parts", action="store_true",
                    help="also time the default setting's steps one by one: the statistics launch, the sums launch "
                         "whole and with only its column or only its diagonal sums")
    ap.add_argument("--device", default="cuda", help="cuda; cpu runs the kernels in the Triton interpreter (a check "
                                                     "of this script under TRITON_INTERPRET=1, not a timing)")
    ap.add_argument("--out", default=None, help="result JSON folder (default: $OUT, else benchmarks/results)")
    args = ap.parse_args(argv)
    for text in args.configs:
        parse_config(text)  # refuse a bad setting before any work
    dev = torch.device(args.device)
    wrap = graphed if dev.type == "cuda" else (lambda fn: fn)
    g = torch.Generator(device=dev).manual_seed(0)
    rows = [r for t in args.lengths for m in args.methods for r in measure(args, t, m, dev, wrap, g)]
    for t in args.lengths:
        for m in args.methods:
            timed = [r for r in rows if r["seq_len"] == t and r["method"] == m and "us" in r]
            if timed:
                best = min(timed, key=lambda r: r["us"])
                base = next((r["us"] for r in timed if r["config"] == "default"), None)
                gain = f", {base / best['us']:.2f}x the default" if base else ""
                print(f"best at T={t} for {m}: {best['config']} ({best['us']:.1f} us{gain})")
    print(record("vs_estimate", rows, args.out))
    return rows


if __name__ == "__main__":
    main()
