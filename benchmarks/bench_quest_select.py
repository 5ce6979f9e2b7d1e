"""Quest's page choice alone: where a decode step's selection time goes, per launch width.

    PYTHONPATH=src python benchmarks/bench_quest_select.py       # Qwen2.5-7B's heads, 32K and 128K, batch 1 and 16

One layer's launch as the inference engine makes it (``select_pages_triton`` with device-side lengths, bf16 page
summaries of 16-token pages, the GQA group sharing its pages, a 1,024-token budget: 63 pages plus the current one),
every call in a CUDA graph: the page scores alone (``page_scores_triton``, the floor: every summary read once), then
the scores and the top-k together (one launch), at the kernel's default warps and at each of ``--warps``. The
difference to the floor is what the selection tail costs; every variant must pick the pages the default picks
(checked first). A row a few pages past a power of two (``--lengths 32848``: a 32K prompt with the engine's
64-token headroom) is held as the power of two and a short tail; ``--padded`` also times it padded to twice the
power of two, as one tensor.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import bench, graphed, record  # noqa: E402

from leanformer.sparse.kernels.quest_scores import (  # noqa: E402
    MAX_TAIL,
    page_scores_triton,
    row_split,
    select_pages_triton,
)


def measure(args, length: int, b: int, dev, wrap, g) -> dict:
    p = length // args.page
    k = args.budget // args.page - 1
    q = torch.randn(b, args.heads, 1, args.dim, device=dev, dtype=torch.bfloat16, generator=g)
    a, c = (torch.randn(b, args.kv_heads, p, args.dim, device=dev, dtype=torch.bfloat16, generator=g)
            for _ in range(2))
    kmin, kmax = torch.minimum(a, c), torch.maximum(a, c)
    lens = torch.full((b, args.kv_heads), length, device=dev, dtype=torch.int32)

    def select(warps=0, padded=False):
        return select_pages_triton(q, kmin, kmax, k, True, lens=lens, page_size=args.page, num_warps=warps or None,
                                   max_tail=0 if padded else MAX_TAIL)

    variants = {(f"select_w{w}" if w else "select"): (w, False) for w in args.warps}
    if args.padded and row_split(p)[1]:
        variants["select_padded"] = (0, True)
    want = select()
    same = all(torch.equal(select(*v), want) for v in variants.values())
    calls = {"scores": lambda: page_scores_triton(q, kmin, kmax, True),
             **{name: (lambda v=v: select(*v)) for name, v in variants.items()}}
    us = {name: bench(wrap(fn), warmup=1, repeat=args.repeat) * 1e6 for name, fn in calls.items()}
    row = {"length": length, "batch": b, "pages": p, "row_split": list(row_split(p)), "k": k, "heads": args.heads,
           "kv_heads": args.kv_heads, "same_pages": same, **{f"{n}_us": v for n, v in us.items()},
           **{f"{n}_tail_us": us[n] - us["scores"] for n in variants}}
    tails = ", ".join(f"{n} {us[n]:.1f} (tail {row[n + '_tail_us']:.1f})" for n in variants)
    print(f"L={length:>6} B={b:>2} pages={p:>5}: scores {us['scores']:.1f} us; {tails}"
          f"{'' if same else '  DIFFERENT PAGES'}", flush=True)
    return row


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[32768, 131072])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--heads", type=int, default=28)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--page", type=int, default=16)
    ap.add_argument("--budget", type=int, default=1024, help="tokens read per step (whole pages, the current one too)")
    ap.add_argument("--repeat", type=int, default=50)
    ap.add_argument("--warps", type=int, nargs="+", default=[0], help="the selection launch's warps, each timed "
                    "(0: the kernel's default for the row)")
    ap.add_argument("--padded", action="store_true", help="also time rows with a short tail padded to one tensor "
                    "(twice the power of two)")
    ap.add_argument("--device", default="cuda", help="cuda; cpu runs the kernels in the Triton interpreter (a check "
                                                     "of this script under TRITON_INTERPRET=1, not a timing)")
    ap.add_argument("--out", default=None, help="result JSON folder (default: $OUT, else benchmarks/results)")
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    wrap = graphed if dev.type == "cuda" else (lambda fn: fn)
    g = torch.Generator(device=dev).manual_seed(0)
    rows = [measure(args, length, b, dev, wrap, g) for length in args.lengths for b in args.batch]
    print(record("quest_select", rows, args.out))
    return rows


if __name__ == "__main__":
    main()
