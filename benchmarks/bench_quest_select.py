"""Quest's page choice alone: where a decode step's selection time goes, per launch width.

    PYTHONPATH=src python benchmarks/bench_quest_select.py       # Qwen2.5-7B's heads, 32K and 128K, batch 1 and 16

One layer's launch as the inference engine makes it (``select_pages_triton`` with device-side lengths, bf16 page
summaries of 16-token pages, the GQA group sharing its pages, a 1,024-token budget: 63 pages plus the current one),
every call in a CUDA graph: the page scores alone (``page_scores_triton``, the floor: every summary read once), then
the scores and the top-k together (one launch), at the kernel's default warps and at each of ``--warps``. The
difference to the floor is what the selection tail costs; every variant must pick the pages the default picks
(checked first). A row a few pages past a power of two (``--lengths 32848``: a 32K prompt with the engine's
64-token headroom) is held as the power of two and a short tail; ``--padded`` also times it padded to twice the
power of two, as one tensor. ``--compact 6:512 8:256`` also times the top-k that counts the whole row that many
times and finishes on at most that many candidates left (``select_compact6_512`` ... columns; ``--compact 0:16``
is the 32-step bisection whatever the module's default). ``--tail-parts`` times the tail's parts alone, one program a
row over the scores already written (at the launch's width): loading the row, then the 32-step bisection for the
``k``-th score, then writing the winners, and the compacted top-k of each ``--compact`` setting with the write
(rows of a power of two pages only).
"""

from __future__ import annotations

import argparse
import os
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
    select_warps,
)

if torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1":
    import triton
    import triton.language as tl

    from leanformer.sparse.kernels.block_select import kth_largest_key, kth_largest_key_compact
    from leanformer.sparse.kernels.quest_scores import _row_keys, _write_top

    @triton.jit
    def _tail_part(S, OUT, SCR, P, K, PART: tl.constexpr, NP: tl.constexpr, STEPS: tl.constexpr,
                   CAP: tl.constexpr):
        """One row of the selection's tail: ``PART`` 0 loads it (and stores a sum), 1 also bisects for the
        ``K``-th key (and stores it), 2 also writes the winners; 3 is 2 with the compacted top-k."""
        row = tl.program_id(0)
        key, offs, valid = _row_keys(S + row * P, 0, P, P, NP)
        if PART == 0:
            tl.store(OUT + row * K, tl.sum(key, 0))
        elif PART == 1:
            tl.store(OUT + row * K, kth_largest_key(key, K))
        else:
            if PART == 2:
                thr = kth_largest_key(key, K)
            else:
                thr = kth_largest_key_compact(key, key, K, SCR + row * CAP, False, STEPS, CAP)
            _write_top(OUT + row * K, key, offs, valid, thr, K - tl.sum((key > thr).to(tl.int32), 0), 0)


def tail_parts(args, scores: torch.Tensor, k: int, wrap) -> dict:
    """``{part: us}`` of :func:`_tail_part` over ``scores [rows, P]`` (P a power of two)."""
    rows, p = scores.shape
    out = torch.empty(rows, k, device=scores.device, dtype=torch.int32)
    warps = select_warps(p, rows)
    parts = {"tail_load": (0, 0, 16), "tail_bisect": (1, 0, 16), "tail_write": (2, 0, 16),
             **{f"tail_compact{st}_{cap}": (3, st, cap) for st, cap in args.compact if st}}
    us = {}
    for name, (part, steps, cap) in parts.items():
        scr = torch.empty(rows, cap, device=scores.device, dtype=torch.int32)

        def call(part=part, steps=steps, cap=cap, scr=scr):
            _tail_part[(rows,)](scores, out, scr, p, k, PART=part, NP=p, STEPS=steps, CAP=cap, num_warps=warps)
        us[name] = bench(wrap(call), warmup=1, repeat=args.repeat) * 1e6
    return us


def measure(args, length: int, b: int, dev, wrap, g) -> dict:
    p = length // args.page
    k = args.budget // args.page - 1
    q = torch.randn(b, args.heads, 1, args.dim, device=dev, dtype=torch.bfloat16, generator=g)
    a, c = (torch.randn(b, args.kv_heads, p, args.dim, device=dev, dtype=torch.bfloat16, generator=g)
            for _ in range(2))
    kmin, kmax = torch.minimum(a, c), torch.maximum(a, c)
    lens = torch.full((b, args.kv_heads), length, device=dev, dtype=torch.int32)

    def select(warps=0, padded=False, compact=(None, None)):
        return select_pages_triton(q, kmin, kmax, k, True, lens=lens, page_size=args.page, num_warps=warps or None,
                                   max_tail=0 if padded else MAX_TAIL, compact_steps=compact[0],
                                   compact_cap=compact[1])

    variants = {(f"select_w{w}" if w else "select"): (w, False) for w in args.warps}
    if args.padded and row_split(p)[1]:
        variants["select_padded"] = (0, True)
    for steps, cap in args.compact:
        variants[f"select_compact{steps}_{cap}"] = (0, False, (steps, cap))
    want = select()
    same = all(torch.equal(select(*v), want) for v in variants.values())
    calls = {"scores": lambda: page_scores_triton(q, kmin, kmax, True),
             **{name: (lambda v=v: select(*v)) for name, v in variants.items()}}
    us = {name: bench(wrap(fn), warmup=1, repeat=args.repeat) * 1e6 for name, fn in calls.items()}
    parts = {}
    if args.tail_parts and not row_split(p)[1] and p == row_split(p)[0]:
        parts = tail_parts(args, page_scores_triton(q, kmin, kmax, True).view(-1, p), k, wrap)
    row = {"length": length, "batch": b, "pages": p, "row_split": list(row_split(p)), "k": k, "heads": args.heads,
           "kv_heads": args.kv_heads, "same_pages": same, **{f"{n}_us": v for n, v in us.items()},
           **{f"{n}_tail_us": us[n] - us["scores"] for n in variants}, **{f"{n}_us": v for n, v in parts.items()}}
    tails = ", ".join(f"{n} {us[n]:.1f} (tail {row[n + '_tail_us']:.1f})" for n in variants)
    print(f"L={length:>6} B={b:>2} pages={p:>5}: scores {us['scores']:.1f} us; {tails}"
          f"{'' if same else '  DIFFERENT PAGES'}", flush=True)
    if parts:
        print("    tail alone: " + ", ".join(f"{n} {v:.1f}" for n, v in parts.items()) + " us", flush=True)
    return row


def _compact(text: str) -> tuple[int, int]:
    """``"6:512"`` -> ``(6, 512)``: steps 0-31, a power-of-two cap of at least 16."""
    steps, _, cap = text.partition(":")
    if not (steps.isdigit() and cap.isdigit() and int(steps) < 32 and int(cap) >= 16 and not int(cap) & (int(cap) - 1)):
        raise argparse.ArgumentTypeError(f"{text!r}: give STEPS:CAP, STEPS 0-31 and CAP a power of two >= 16")
    return int(steps), int(cap)


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
    ap.add_argument("--compact", type=_compact, nargs="+", default=[], metavar="STEPS:CAP",
                    help="also time the top-k with STEPS counts over the row, then at most CAP candidates")
    ap.add_argument("--tail-parts", action="store_true", help="also time the selection tail's parts alone")
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
