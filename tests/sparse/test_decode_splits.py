"""The split-K plan of the fused decode kernel: the heuristic itself, and the kernel under the plan an H200 would
get (many splits, a kept length not divisible by the block, splits with no valid key, one split and no merge), run
on CPU through the Triton interpreter (``TRITON_INTERPRET=1``) in a subprocess."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap

import pytest

from leanformer.sparse.kernels.decode import BLOCK_N, PROGRAMS_PER_SM, split_plan


@pytest.mark.parametrize("heads,n,splits,chunk", [
    (8, 8192, 64, 128),     # batch 1, 8 KV heads, 1/16 of 128K: ~4 programs per SM of 132
    (128, 8192, 4, 2048),   # batch 16
    (512, 8192, 1, 8192),   # batch 16 x 32 query-head selections: the grid is full without splitting
    (8, 1000, 16, 64),      # fewer blocks than the target: one block per split, the last one partial
    (1, 1, 1, 64),
])
def test_split_plan_on_h200(heads, n, splits, chunk):
    assert split_plan(heads, n, sms=132) == (splits, chunk)


def test_split_plan_covers_every_position_once():
    for heads in (1, 2, 7, 8, 16, 128, 512, 4096):
        for n in (1, 63, 64, 65, 1000, 8192, 8208, 131072):
            splits, chunk = split_plan(heads, n, sms=132)
            assert chunk % BLOCK_N == 0 and splits >= 1
            assert (splits - 1) * chunk < n <= splits * chunk  # no empty split, nothing left over
            assert splits == 1 or heads * splits <= PROGRAMS_PER_SM * 132
            assert splits == math.ceil(n / chunk)


SCRIPT = textwrap.dedent("""
    import json
    import torch
    import leanformer.sparse.kernels.decode as kd
    kd.sm_count = lambda device: 132  # the H200's plan on CPU tensors
    g = torch.Generator().manual_seed(42)
    def gap(a, b):  # largest |a - b|; a NaN on one side only counts as infinite (max() would drop a NaN)
        return (a - b).abs().masked_fill(a.isnan() & b.isnan(), 0).nan_to_num(nan=float("inf")).max().item()
    worst, plans = 0.0, []
    for b, hq, hk, hs in [(1, 8, 2, "kv"), (1, 4, 2, "q"), (2, 8, 2, "kv")]:
        h = hk if hs == "kv" else hq
        length = 1201
        q = torch.randn(b, hq, 1, 16, generator=g)
        k, v = torch.randn(b, hk, length, 16, generator=g), torch.randn(b, hk, length, 16, generator=g)
        idx = torch.rand(b, h, length, generator=g).topk(1000, -1).indices  # unsorted, 1000 = 15 x 64 + 40
        valid = torch.rand(b, h, 1000, generator=g) < 0.7
        valid[..., 64:128] = False  # a whole split with no valid key
        for vv in (None, valid):
            ref = kd.gather_decode_reference(q, k, v, idx, vv)
            for fused in (True, False):  # the last split merging, or a merge launch
                worst = max(worst, gap(kd.gather_decode_triton(q, k, v, idx, vv, fused_merge=fused), ref))
        # pages of 16 (the last one partial): 50 pages + the current one = 816 positions
        pages = torch.rand(b, h, length // 16, generator=g).topk(50, -1).indices
        out = kd.gather_decode_pages_triton(q, k, v, pages, 16, last_page=length // 16)
        ref = kd.gather_decode_pages_reference(q, k, v, pages, 16, last_page=length // 16)
        worst = max(worst, gap(out, ref))
        plans.append(kd.split_plan(b * h, 1000, 132)[0])
    # a grid full without splitting: one split, the kernel writes the output itself (no merge launch)
    q = torch.randn(2, 4, 1, 16, generator=g)
    k, v = torch.randn(2, 4, 300, 16, generator=g), torch.randn(2, 4, 300, 16, generator=g)
    kd.sm_count = lambda device: 1
    idx = torch.rand(2, 4, 300, generator=g).topk(199, -1).indices
    worst = max(worst, gap(kd.gather_decode_triton(q, k, v, idx, None), kd.gather_decode_reference(q, k, v, idx, None)))
    plans.append(kd.split_plan(8, 199, 1)[0])
    print(json.dumps({"worst": worst, "plans": plans}))
""")


def test_kernel_under_h200_split_plan_in_interpreter():
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1")
    res = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["plans"] == [16, 16, 16, 1], got  # many splits in the first three, one in the last
    assert got["worst"] < 1e-5, got


def test_merge_counts_are_never_freed():
    """The counts a one-launch merge uses stay allocated whatever sizes come after (a CUDA graph captured over them
    keeps their address, so a freed buffer would be replayed into)."""
    import torch

    from leanformer.sparse.kernels.quest_scores import counts_for

    first = counts_for(torch.device("cpu"), 64)
    for n in range(7, 18):  # eleven more sizes, 128 to 131,072 entries
        counts_for(torch.device("cpu"), 1 << n)
    again = counts_for(torch.device("cpu"), 33)
    assert again is first and again.data_ptr() == first.data_ptr() and int(again.sum()) == 0
