"""The Triton kernels' logic, run on CPU through the Triton interpreter (``TRITON_INTERPRET=1``) in a subprocess.

The GPU tests (``-m gpu``) check the compiled kernels' precision; these check indexing, masking and the online
softmax on odd lengths and GQA without a GPU."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("triton")

SCRIPT = textwrap.dedent("""
    import torch
    from leanformer.sparse.kernels import from_diagonals, from_tiles, tile_attention, tile_attention_reference
    from leanformer.sparse.kernels.decode import gather_decode_reference, gather_decode_triton
    g = torch.Generator().manual_seed(42)
    worst = 0.0
    for t, bs, d, hq, hk in [(77, 16, 16, 4, 2), (45, 32, 16, 2, 1), (150, 128, 16, 2, 2)]:
        q, k, v = (torch.randn(1, h, t, d, generator=g) for h in (hq, hk, hk))
        n = -(-t // bs)
        for pat in (from_diagonals(torch.rand(1, hq, n, generator=g) < 0.4,
                                   torch.rand(1, hq, t, generator=g) < 0.2, bs, t),
                    from_tiles(torch.rand(1, hq, n, n, generator=g) < 0.4, bs, t)):
            out = tile_attention(q, k, v, pat)
            worst = max(worst, (out - tile_attention_reference(q, k, v, pat)).abs().max().item())
    q = torch.randn(2, 8, 1, 16, generator=g)
    k, v = torch.randn(2, 2, 101, 16, generator=g), torch.randn(2, 2, 101, 16, generator=g)
    for hs in (2, 8):
        idx = torch.sort(torch.rand(2, hs, 101, generator=g).topk(70, -1).indices, -1).values
        valid = torch.rand(2, hs, 70, generator=g) < 0.7
        valid[..., 0] = True
        for vv in (None, valid):
            out = gather_decode_triton(q, k, v, idx, vv)
            worst = max(worst, (out - gather_decode_reference(q, k, v, idx, vv)).abs().max().item())
    print(worst)
""")


def test_triton_kernels_match_references_in_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1")
    res = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert float(res.stdout.strip().splitlines()[-1]) < 1e-5
