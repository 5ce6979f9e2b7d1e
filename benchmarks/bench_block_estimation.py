"""Where block top-k's pattern estimation spends its time, and what cheaper variants of each step would save.

    PYTHONPATH=src python benchmarks/bench_block_estimation.py --lengths 131072 32768

Times, on one GPU and side by side in one run, each step of ``block_topk``'s estimation (bf16 inputs, 32 query / 8
key heads, d 128, 128-token blocks) and its alternatives:

* pooling q and k into block means (one reduction each);
* the block scores: ``baddbmm`` in fp32 (the current path), with TF32 allowed, and on bf16 operands;
* the selection of ``k - 1`` blocks per query block: ``torch.topk`` on fp32 scores (the current path: a multi-pass
  radix select), a full ``torch.sort`` of each row then a slice, and ``torch.topk`` on bf16 scores;
* building the FlexAttention ``BlockMask`` from the tiles (index tensors padded to the number of key blocks, as now).

For each alternative it also reports how many selected blocks differ from the current path's (ties and rounding).
Writes ``block_estimation-*.json``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import bench, record  # noqa: E402

from leanformer.sparse.base import causal_pairs  # noqa: E402
from leanformer.sparse.kernels.flex_block import build_block_mask  # noqa: E402
from leanformer.sparse.prefill.block_topk import block_pattern, k_for_budget, topk_bias  # noqa: E402
from leanformer.sparse.prefill.estimate import pool_blocks  # noqa: E402


def overlap_loss(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fraction of the selected blocks in ``a [..., K]`` missing from ``b [..., K]`` (same rows)."""
    a, b = a.sort(-1).values, b.sort(-1).values
    hit = torch.zeros_like(a, dtype=torch.bool)
    for j in range(b.shape[-1]):
        hit |= a == b[..., j:j + 1]
    return 1.0 - hit.float().mean().item()


def bench_length(t: int, sparsity: float, args) -> dict:
    bs, hq, hk, d = 128, args.heads, args.kv_heads, args.dim
    g = hq // hk
    q = torch.randn(1, hq, t, d, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(1, hk, t, d, device="cuda", dtype=torch.bfloat16)
    n = -(-t // bs)
    scale = d ** -0.5
    budget = torch.tensor([[(1 - sparsity) * causal_pairs(t)]], dtype=torch.float64)
    kk = int(k_for_budget(budget, n, bs, t))
    kmax = min(max(kk, min(n, 3)), n)
    bias = topk_bias(n, q.device)
    rows = bias.expand(g, n, n).reshape(g * n, n)
    r = args.repeat
    ms = {}
    ms["pool_q_k"] = bench(lambda: (pool_blocks(q, bs), pool_blocks(k, bs)), warmup=2, repeat=r) * 1e3
    qp, kp = pool_blocks(q, bs), pool_blocks(k, bs)
    a, bt = qp.reshape(hk, g * n, d), kp.reshape(hk, n, d).transpose(-1, -2)

    def scores_fp32():
        return torch.baddbmm(rows, a, bt, alpha=scale)

    def scores_tf32():
        old = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = True
        try:
            return torch.baddbmm(rows, a, bt, alpha=scale)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = old

    a16, bt16, rows16 = a.bfloat16(), bt.bfloat16(), rows.bfloat16()

    def scores_bf16():
        return torch.baddbmm(rows16, a16, bt16, alpha=scale)

    for name, fn in (("scores_fp32", scores_fp32), ("scores_tf32", scores_tf32), ("scores_bf16", scores_bf16)):
        ms[name] = bench(fn, warmup=2, repeat=r) * 1e3
    s32 = scores_fp32().reshape(1, hq, n, n)
    s16 = scores_bf16().reshape(1, hq, n, n)
    ref = torch.topk(s32, kmax - 1, dim=-1).indices
    sel = {
        "topk_fp32": lambda: torch.topk(s32, kmax - 1, dim=-1).indices,
        "sort_fp32": lambda: torch.sort(s32, dim=-1, descending=True).indices[..., :kmax - 1],
        "topk_bf16": lambda: torch.topk(s16, kmax - 1, dim=-1).indices,
        "sort_bf16": lambda: torch.sort(s16, dim=-1, descending=True).indices[..., :kmax - 1],
    }
    differs = {}
    for name, fn in sel.items():
        ms[name] = bench(fn, warmup=2, repeat=r) * 1e3
        # rows of the first query blocks hold -inf ties (future blocks): compare only rows with kmax - 1 real blocks
        lo = kmax
        differs[name] = overlap_loss(fn()[..., lo:, :], ref[..., lo:, :])
    ms["tf32_vs_fp32_selection_differs"] = overlap_loss(
        torch.topk(scores_tf32().reshape(1, hq, n, n), kmax - 1, dim=-1).indices[..., kmax:, :], ref[..., kmax:, :])
    pattern = block_pattern(s32, kk, bs, t)
    ms["block_pattern"] = bench(lambda: block_pattern(s32, kk, bs, t), warmup=2, repeat=r) * 1e3
    ms["build_block_mask"] = bench(lambda: build_block_mask(pattern), warmup=2, repeat=r) * 1e3
    row = {"seq_len": t, "sparsity": sparsity, "k": kk, "n_blocks": n, "ms": ms, "selection_differs": differs}
    print(f"T={t} s={sparsity} k={kk}: " + ", ".join(f"{key} {val:.3f}" for key, val in ms.items())
          + " | differs " + ", ".join(f"{key} {val:.4f}" for key, val in differs.items()), flush=True)
    return row


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[131072, 32768])
    ap.add_argument("--sparsities", type=float, nargs="+", default=[0.95, 0.9])
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("bench_block_estimation.py needs a CUDA GPU")
    torch.manual_seed(0)
    rows = [bench_length(t, s, args) for t in args.lengths for s in args.sparsities]
    print("wrote", record("block_estimation", rows))


if __name__ == "__main__":
    main()
