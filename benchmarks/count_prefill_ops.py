"""The PyTorch ops one vertical-slash or FlexPrefill call issues around its kernels, by project function, on the CPU.

    PYTHONPATH=src python benchmarks/count_prefill_ops.py --method flexprefill --length 32768 --sparsity 0.9
    PYTHONPATH=src python benchmarks/count_prefill_ops.py --method flexprefill --length 32768 --gpu-path

Each op is a launch the host issues (and, on a GPU, a small kernel): at 32K tokens a call is bound by the host when
it is not captured in a CUDA graph. The window scores are synthetic and the attention kernel is skipped (their
launches are not PyTorch ops). Without ``--gpu-path`` every step runs as on a CPU, in PyTorch. With it, the steps a
GPU runs as one Triton launch count as one op each: the line patterns' bookkeeping (``kernels/line_pattern.py``, its
launches faked: the PyTorch ops around them), and FlexPrefill's budget split, query-aware test, coverage counts and
row tiles (their PyTorch references run, for their outputs, and count once). Prints the top-level ops of one call (an
op inside another counts once), in all and by the innermost project function that issued them.

``--steps`` instead counts the tile kernel's steps for one call's pattern (random queries and keys, the estimation
run in PyTorch, the kernel skipped): tile steps (one key block each) and column steps (``BN`` gathered columns each,
the last one partly filled), the two loops of the kernel that cost differently.

    PYTHONPATH=src python benchmarks/count_prefill_ops.py --method vertical_slash --length 131072 --sparsity 0.95 \
        --steps --heads 8
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import op_site, patched  # noqa: E402

from leanformer import sparse  # noqa: E402
from leanformer.sparse.kernels import line_pattern  # noqa: E402
from leanformer.sparse.prefill import flexprefill, vertical_slash  # noqa: E402

LAUNCH = "one Triton launch on a GPU: "  # the profiler label of a step a GPU runs as one launch


def _one_launch(fn, name: str):
    """``fn`` (a step's PyTorch reference) under a profiler label: its ops count as one launch."""
    def run(*args, **kwargs):
        with torch.profiler.record_function(LAUNCH + name):
            return fn(*args, **kwargs)
    return run


# the line methods with their attention kernel skipped (the query comes back as the output)
_NO_ATTENTION = [(mod, "run_pattern", lambda q, k, v, pattern, scale, impl, kernel_options=None: q)
                 for mod in (flexprefill, vertical_slash)]


class _NoLaunch:
    """A Triton kernel's stand-in: ``kernel[grid](...)`` does nothing."""

    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


def count(method: str, t: int, sparsity: float, heads: int = 32, kv_heads: int = 8,
          gpu_path: bool = False) -> collections.Counter:
    """Top-level PyTorch ops of one call, by (innermost project function)."""
    g = torch.Generator().manual_seed(0)
    vert, slash, tails = (torch.rand(1, heads, t, generator=g) ** 8 for _ in range(3))
    n = -(-t // 128)
    blk = torch.randn(1, heads, n, n, generator=g)
    def scores(q, k, window, scale, tail=0, impl="reference"):
        return vert, slash, tails if tail else None

    changes = [(flexprefill, "window_scores", scores), (vertical_slash, "window_scores", scores),
               (flexprefill, "pooled_block_scores", lambda q, k, bs, scale, bias=None: blk), *_NO_ATTENTION]
    if gpu_path:  # the methods resolve impl "triton", as on a GPU; the launches are faked or their references run
        changes += [(mod, "pick_impl", lambda impl, x, fast: "triton") for mod in (flexprefill, vertical_slash)]
        changes += [(line_pattern, "_gpu", lambda x: True), (line_pattern, "_column_cost", _NoLaunch()),
                    (line_pattern, "_from_lines", _NoLaunch())]
        changes += [(flexprefill, name, _one_launch(getattr(flexprefill, name), name))
                    for name in ("water_fill", "block_distance")]
        changes += [(flexprefill, name, _one_launch(getattr(flexprefill, ref), ref))
                    for name, ref in (("coverage", "coverage_rows"), ("select_row_tiles", "block_tiles_rows"))]
    q = torch.zeros(1, heads, t, 8, dtype=torch.bfloat16)
    k = torch.zeros(1, kv_heads, t, 8, dtype=torch.bfloat16)
    with patched(changes):
        sparse.prefill_attention(q, k, k, method, sparsity)  # warm-up (cached shapes)
        with profile(activities=[ProfilerActivity.CPU], with_stack=True) as p:
            sparse.prefill_attention(q, k, k, method, sparsity)
    sites: collections.Counter = collections.Counter()
    for e in p.events():
        if e.name.startswith(LAUNCH):
            sites[e.name] += 1
        elif e.name.startswith("aten::") and not _in_launch(e):
            site, outer = op_site(e)
            sites[site] += outer is e  # top-level ops only
    return sites


def kernel_steps(method: str, t: int, sparsity: float, heads: int = 8, kv_heads: int = 2, bn: int = 128) -> dict:
    """Tile steps and column steps the tile kernel takes for one call's pattern (random inputs, d 128, fp32 on the
    CPU): the column loop of query block ``i`` covers the columns before the block (the count of block ``i - 1``)."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, heads, t, 128, generator=g)
    k = torch.randn(1, kv_heads, t, 128, generator=g)
    with patched(_NO_ATTENTION):
        _, info = sparse.prefill_attention(q, k, k, method, sparsity)
    p = info["pattern"]
    before = torch.nn.functional.pad(p.col_cnt[..., :-1].long(), (1, 0))
    return {"sparsity": float(info["sparsity"]), "tile_steps": int(p.tile_cnt.sum()),
            "column_steps": int(((before + bn - 1) // bn).sum()), "columns": int(before.sum())}


def _in_launch(event) -> bool:
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith(LAUNCH):
            return True
        parent = parent.cpu_parent
    return False


def main(argv=None) -> collections.Counter | dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", choices=("vertical_slash", "flexprefill"), default="flexprefill")
    ap.add_argument("--length", type=int, default=32768)
    ap.add_argument("--sparsity", type=float, default=0.9)
    ap.add_argument("--gpu-path", action="store_true",
                    help="count each step a GPU runs as one Triton launch once (line patterns' launches faked)")
    ap.add_argument("--steps", action="store_true", help="the tile kernel's tile and column steps instead of ops")
    ap.add_argument("--heads", type=int, default=32)
    args = ap.parse_args(argv)
    kv_heads = max(1, args.heads // 4)
    if args.steps:
        steps = kernel_steps(args.method, args.length, args.sparsity, heads=args.heads, kv_heads=kv_heads)
        print(f"{args.method} at {args.length} tokens, sparsity {args.sparsity}, {args.heads} heads: {steps}")
        return steps
    sites = count(args.method, args.length, args.sparsity, heads=args.heads, kv_heads=kv_heads, gpu_path=args.gpu_path)
    print(f"{args.method} at {args.length} tokens, sparsity {args.sparsity}: {sum(sites.values())} PyTorch ops")
    for site, c in sites.most_common(15):
        print(f"{c:5d}  {site}")
    return sites


if __name__ == "__main__":
    main()
