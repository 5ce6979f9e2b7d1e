"""Sparse prefill attention vs dense cuDNN SDPA on one GPU, pattern estimation included.

    PYTHONPATH=src python benchmarks/bench_sparse_prefill.py --lengths 32768 65536 131072

For each length: dense causal SDPA with the cuDNN backend (keys/values expanded to all query heads beforehand, so
the dense number is not charged for GQA), then every method x sparsity through ``sparse.prefill_attention`` (scoring,
pattern building and the kernel, all timed), and the kernel alone on the same pattern. bf16, random q/k/v (the
pattern of random data is diffuse: this is a speed test, not a quality test). Writes ``sparse_prefill-*.json``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import bench, record  # noqa: E402

from leanformer import sparse  # noqa: E402
from leanformer.nn.attention import repeat_kv  # noqa: E402
from leanformer.sparse.kernels import run_pattern  # noqa: E402


def dense_cudnn(q, k, v):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def bench_length(t, args, flex_points) -> list[dict]:
    q = torch.randn(1, args.heads, t, args.dim, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(1, args.kv_heads, t, args.dim, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(1, args.kv_heads, t, args.dim, device="cuda", dtype=torch.bfloat16)
    g = args.heads // args.kv_heads
    ke, ve = repeat_kv(k, g).contiguous(), repeat_kv(v, g).contiguous()
    dense_ms = bench(lambda: dense_cudnn(q, ke, ve), warmup=2, repeat=args.repeat) * 1e3
    ke = ve = None  # free the expanded copies
    print(f"T={t} dense cuDNN {dense_ms:.2f} ms", flush=True)
    rows = []
    for method in args.methods:
        for s in args.sparsities:
            impls = ["auto"] + (["flex"] if method == "block_topk" and (t, s) in flex_points else [])
            for impl in impls:
                def call(method=method, s=s, impl=impl):
                    return sparse.prefill_attention(q, k, v, method, s, impl=impl)

                _, info = call()
                total_ms = bench(call, warmup=1, repeat=args.repeat) * 1e3
                pat, used = info["pattern"], info["impl"]
                kernel_ms = bench(lambda pat=pat, used=used: run_pattern(q, k, v, pat, None, used),
                                  warmup=1, repeat=args.repeat) * 1e3
                row = {"seq_len": t, "method": method, "impl": used, "requested_sparsity": s,
                       "sparsity": float(info["sparsity"]), "total_ms": total_ms, "kernel_ms": kernel_ms,
                       "estimation_ms": total_ms - kernel_ms, "dense_cudnn_ms": dense_ms,
                       "speedup": dense_ms / total_ms, "kernel_speedup": dense_ms / kernel_ms,
                       "heads": args.heads, "kv_heads": args.kv_heads, "head_dim": args.dim, "dtype": "bf16"}
                rows.append(row)
                print(f"T={t:>6} {method:>14} {used:>6} s={s:.2f} measured={row['sparsity']:.3f} "
                      f"total={total_ms:8.2f} ms kernel={kernel_ms:8.2f} ms speedup={row['speedup']:6.2f}x "
                      f"(kernel {row['kernel_speedup']:6.2f}x)", flush=True)
                del info, pat
                torch.cuda.empty_cache()
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[32768, 65536, 131072])
    ap.add_argument("--sparsities", type=float, nargs="+", default=[0.5, 0.8, 0.9, 0.95])
    ap.add_argument("--methods", nargs="+", default=["vertical_slash", "block_topk", "flexprefill", "streaming"])
    ap.add_argument("--flex-points", nargs="*", default=["131072:0.95", "32768:0.9"],
                    help="length:sparsity points where block_topk is also timed through FlexAttention")
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args(argv)
    torch.manual_seed(42)
    flex_points = {(int(p.split(":")[0]), float(p.split(":")[1])) for p in args.flex_points}
    rows = []
    for t in args.lengths:
        rows += bench_length(t, args, flex_points)
        torch.cuda.empty_cache()
    path = record("sparse_prefill", rows)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
