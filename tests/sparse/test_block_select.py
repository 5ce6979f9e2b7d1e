"""Block top-k's row selection: the reference's defining property on CPU, the Triton kernel against it exactly (ties,
infinities, odd lengths, half precision) under the Triton interpreter; the compiled kernel is compared in test_gpu."""

from __future__ import annotations

import itertools
import textwrap

import pytest
import torch

from leanformer.sparse.kernels.block_select import block_tiles, select_block_tiles, topk_rows


def _brute(row: list[float], k: int) -> list[int]:
    """The k largest, equal values lowest index first, as a sorted index list (plain Python)."""
    order = sorted(range(len(row)), key=lambda j: (-row[j], j))
    return sorted(order[:k])


@pytest.mark.parametrize("k", [0, 1, 5, 17])
def test_reference_is_the_k_largest_lowest_index_first(k):
    g = torch.Generator().manual_seed(0)
    s = torch.randint(-3, 4, (3, 4, 17), generator=g).float()  # many ties
    s[0, 0, 3] = float("inf")
    s[0, 0, 5:9] = float("-inf")
    out = topk_rows(s, k)
    assert out.dtype == torch.int32 and out.shape == (3, 4, k)
    for idx in itertools.product(range(3), range(4)):
        assert out[idx].tolist() == _brute(s[idx].tolist(), k)
    if k:  # the chosen values are torch.topk's values
        torch.testing.assert_close(torch.gather(s, -1, out.long()).sort(-1).values,
                                   torch.topk(s, k, -1).values.sort(-1).values)


def test_block_tiles_keep_the_best_blocks_then_the_diagonal():
    """Row i keeps min(max(min(i + 1, 3), k), i + 1) tiles: its best off-diagonal blocks, then i; every causal
    block while it has no more than that."""
    n, k = 11, 5
    g = torch.Generator().manual_seed(3)
    i = torch.arange(n)
    s = torch.randn(2, 3, n, n, generator=g).masked_fill(i[None, :] >= i[:, None], float("-inf"))
    tiles, cnt = block_tiles(s, k)
    assert tiles.shape == (2, 3, n, k) and cnt.dtype == torch.int32
    for b, h, r in itertools.product(range(2), range(3), range(n)):
        c = int(cnt[b, h, r])
        assert c == min(max(min(r + 1, 3), k), r + 1)
        assert int(tiles[b, h, r, c - 1]) == r
        assert sorted(tiles[b, h, r, : c - 1].tolist()) == _brute(s[b, h, r, :r].tolist(), c - 1)


def test_cpu_dispatch_is_the_reference_and_bad_input_is_refused():
    s = torch.randn(2, 9)
    sq = torch.randn(2, 9, 9)
    assert all(torch.equal(a, b) for a, b in zip(select_block_tiles(sq, 4), block_tiles(sq, 4)))
    with pytest.raises(ValueError, match="k=10 must be between 0 and the row length 9"):
        topk_rows(s, 10)
    with pytest.raises(TypeError, match="float scores"):
        topk_rows(torch.ones(2, 9, dtype=torch.long), 2)
    with pytest.raises(ValueError, match=r"square block scores \[..., NQB, NKB\], got \(2, 9\)"):
        block_tiles(s, 2)


SCRIPT = textwrap.dedent("""
    import torch
    from leanformer.sparse.kernels.block_select import block_tiles, block_tiles_triton, topk_rows, topk_rows_triton
    g = torch.Generator().manual_seed(1)
    bad = 0
    for n, ks, dtype in [(1, (0, 1), torch.float32), (37, (1, 5, 36, 37), torch.float32),
                         (128, (3, 64), torch.bfloat16), (300, (26, 299), torch.float32)]:
        for ties in (False, True):
            s = (torch.randint(-4, 5, (6, n), generator=g).float() if ties else torch.randn(6, n, generator=g))
            s[0, : n // 2] = float("-inf")
            s[1, -1] = float("inf")
            s[2] = 0.0
            if n > 2:
                s[3, 1] = -0.0
            s = s.to(dtype)
            for k in ks:
                bad += int(not torch.equal(topk_rows_triton(s, k), topk_rows(s, k)))
    # block tiles: square biased scores as block top-k makes them, k below, at and above 3, GQA-sized batches
    for n in (1, 2, 5, 33):
        i = torch.arange(n)
        s = torch.randn(2, 3, n, n, generator=g).masked_fill(i[None, :] >= i[:, None], float("-inf"))
        s[..., 1:, 0] = float("inf")
        for k in (1, 2, 3, 4, n):
            a, b = block_tiles_triton(s, k), block_tiles(s, k)
            bad += int(not (torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])))
    print(bad)
""")


def test_triton_select_equals_reference_in_interpreter(triton_interpret):
    assert int(triton_interpret(SCRIPT)) == 0
