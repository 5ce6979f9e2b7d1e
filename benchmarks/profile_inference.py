"""Where a whole-model prefill and a decode step spend their GPU time: the engine (``leanformer.infer.Engine``) on
a random-weight preset, under ``torch.profiler``, kernels grouped into GEMMs, attention, elementwise and the rest.

    python3 benchmarks/profile_inference.py --model arch:qwen2.5-7b --length 131072 --prefill block_topk \
        --sparsity 0.95 --decode snapkv --decode-sparsity 0.9375 [--layers 28] [--no-pack] [--phases prefill]

Prints one table per phase (share of kernel time per group, the top kernels) and the kernel time against the wall
time of the captured decode step (the gap is launch and dependency overhead), and each prefill's peak GPU memory;
writes ``profile_inference-<stamp>.json`` (see ``common.record``). The projections are packed as ``leanformer speed``
packs them (``--no-pack``: the model's own layout).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import record  # noqa: E402

from leanformer.infer import Engine  # noqa: E402
from leanformer.infer.speed_cli import build_model  # noqa: E402

GROUPS = (("gemm", ("gemm", "gemv", "cutlass", "cublas", "sm90_xmma", "nvjet", "splitk")),
          ("attention", ("attn", "cudnn", "fmha", "flash", "tile_attn", "_fwd", "decode", "merge")),
          ("estimation", ("select", "pool", "topk", "sort", "scores", "bmm")),
          ("elementwise", ("triton_", "elementwise", "vectorized", "reduce", "copy", "cat", "index", "scatter",
                           "gather", "rope", "fill")))


def group(name: str) -> str:
    low = name.lower()
    for g, keys in GROUPS:
        if any(k in low for k in keys):
            return g
    return "other"


def kernels(prof) -> list[dict]:
    out = {}
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            r = out.setdefault(e.name, {"name": e.name[:90], "us": 0.0, "calls": 0})
            r["us"] += e.device_time_total if hasattr(e, "device_time_total") else e.cuda_time_total
            r["calls"] += 1
    return sorted(out.values(), key=lambda r: -r["us"])


def summary(rows: list[dict], wall_ms: float, title: str) -> dict:
    total = sum(r["us"] for r in rows) / 1e3
    groups: dict = {}
    for r in rows:
        groups[group(r["name"])] = groups.get(group(r["name"]), 0.0) + r["us"] / 1e3
    print(f"\n== {title}: wall {wall_ms:.2f} ms, kernels {total:.2f} ms, {sum(r['calls'] for r in rows)} launches")
    for g, ms in sorted(groups.items(), key=lambda x: -x[1]):
        print(f"  {g:12s} {ms:9.2f} ms  {100 * ms / max(total, 1e-9):5.1f}%")
    for r in rows[:15]:
        print(f"    {r['us'] / 1e3:8.2f} ms  x{r['calls']:<5d} {r['name']}")
    return {"wall_ms": wall_ms, "kernel_ms": total, "groups_ms": groups, "top": rows[:40]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default="arch:qwen2.5-7b")
    p.add_argument("--layers", type=int, default=None)
    p.add_argument("--length", type=int, default=32768)
    p.add_argument("--prefill", default="block_topk")
    p.add_argument("--sparsity", type=float, default=0.95)
    p.add_argument("--decode", default="snapkv")
    p.add_argument("--decode-sparsity", type=float, default=0.9375)
    p.add_argument("--decode-param", action="append", default=[], metavar="KEY=VALUE",
                   help="a decode-method parameter, e.g. share_gqa=false for Quest (repeatable)")
    p.add_argument("--no-pack", action="store_true", help="keep the model's q/k/v and gate/up projections apart")
    p.add_argument("--phases", nargs="+", choices=("prefill", "decode"), default=["prefill", "decode"])
    args = p.parse_args()
    dec_params = {k: yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in args.decode_param)}
    dev = torch.device("cuda")
    model, _ = build_model(args.model, dev, torch.bfloat16, args.layers)
    ids = torch.randint(0, model.config.vocab_size, (args.length,), device=dev)
    pack = not args.no_pack
    results = {}
    for pre in ("dense", args.prefill) if "prefill" in args.phases else ():
        eng = Engine(model, prefill=None if pre == "dense" else pre, sparsity=args.sparsity, pack_projections=pack)
        eng.batch([args.length], 1).prefill(0, ids)  # warm-up (compilation)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            t0 = time.perf_counter()
            eng.batch([args.length], 1).prefill(0, ids)
            torch.cuda.synchronize()
            wall = 1e3 * (time.perf_counter() - t0)
        peak = torch.cuda.max_memory_allocated() / 2**30
        results[f"prefill_{pre}"] = {**summary(kernels(prof), wall, f"prefill {pre} at {args.length}"),
                                     "peak_gib": peak}
        print(f"  peak memory {peak:.2f} GiB")
    for dec in ("dense", args.decode) if "decode" in args.phases else ():
        params = dec_params if dec != "dense" else {}
        eng = Engine(model, decode=None if dec == "dense" else dec, sparsity=args.decode_sparsity,
                     decode_params=params, pack_projections=pack)
        b = eng.batch([args.length], 24)
        b.prefill(0, ids)
        for _ in range(3):
            b.step()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(10):
            b.step()
        torch.cuda.synchronize()
        wall = 1e3 * (time.perf_counter() - t0) / 10
        eager = Engine(model, decode=None if dec == "dense" else dec, sparsity=args.decode_sparsity,
                       decode_params=params, cuda_graph=False, pack_projections=pack)
        be = eager.batch([args.length], 8)
        be.prefill(0, ids)
        be.step()
        torch.cuda.synchronize()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            be.step()
            torch.cuda.synchronize()
        results[f"decode_{dec}"] = summary(kernels(prof), wall, f"decode step {dec} at {args.length} "
                                           "(wall: captured step; kernels: one eager step)")
        del b, be
    record("profile_inference", {"args": vars(args), **results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
