"""Every decode method: equals dense at sparsity 0, attends exactly to the positions it reports, reads fewer keys."""

from __future__ import annotations

import pytest
import torch

from leanformer import sparse
from leanformer.errors import UserError
from leanformer.nn.attention import attention
from leanformer.sparse.decode.quest import page_scores
from leanformer.sparse.kernels.decode import gather_decode_attention, gather_decode_reference

METHODS = sorted(sparse.DECODE_METHODS)
SMALL = {"dense": {}, "quest": {"page_size": 4, "token_budget": 16},
         "snapkv": {"capacity": 12, "window": 8, "kernel": 3, "local": 4, "sinks": 2},
         "ada_snapkv": {"capacity": 12, "window": 8, "kernel": 3, "local": 4, "sinks": 2},
         "streaming": {"sinks": 2, "window": 8}}


def _setup(b=2, hq=4, hk=2, t=61, d=16, seed=42):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, hq, t, d, generator=g)
    k, v = torch.randn(b, hk, t, d, generator=g), torch.randn(b, hk, t, d, generator=g)
    return q, k, v


def _run(method, s, q, k, v, **extra):
    """Prefill the first T-1 tokens, then one step for the last query over the whole cache."""
    m = sparse.build_decode(method, **{**SMALL[method], **extra})
    t = k.shape[2]
    m.observe_prefill(0, q[:, :, :t - 1], k[:, :, :t - 1], v[:, :, :t - 1])
    return m, m.attend(0, q[:, :, -1:], k, v, sparsity=s)


def _mask_from(m, q, k, s):
    """Rebuild the selection the method made (deterministic given its state) as a boolean mask."""
    if hasattr(m, "select"):
        idx, valid, _ = m.select(0, q, k, s)
    else:
        return None
    return idx, valid


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("t", [61, 64])
def test_sparsity_zero_equals_dense(method, t):
    q, k, v = _setup(t=t)
    _, (out, info) = _run(method, 0.0, q, k, v)
    ref = attention(q[:, :, -1:], k, v, causal=False, backend="math")
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    assert float(info["sparsity"]) == 0.0


@pytest.mark.parametrize("method", [m for m in METHODS if m != "dense"])
@pytest.mark.parametrize("s", [0.75, 0.9, None])
def test_reads_fewer_keys_and_equals_masked_dense(method, s, monkeypatch):
    q, k, v = _setup(t=97)
    seen = {}
    import leanformer.sparse.kernels.decode as kd

    real = kd.run_decode

    def spy(q_, k_, v_, idx, valid, scale, impl):
        seen.update(idx=idx, valid=valid)
        return real(q_, k_, v_, idx, valid, scale, impl)

    for mod in ("quest", "snapkv", "streaming", "dense"):
        monkeypatch.setattr(f"leanformer.sparse.decode.{mod}.run_decode", spy)
    _, (out, info) = _run(method, s, q, k, v)
    idx, valid = seen["idx"], seen["valid"]
    ref = gather_decode_reference(q[:, :, -1:], k, v, idx, valid)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    n_read = idx.numel() if valid is None else int(valid.sum())
    assert float(info["keys_read"]) == n_read
    assert float(info["keys_read"]) < 0.5 * float(info["keys_total"])
    if s is not None:
        assert float(info["sparsity"]) >= s - 0.1
    # no position is read twice in one head
    ok_all = (valid if valid is not None else idx >= 0).reshape(-1, idx.shape[-1])
    for row, ok in zip(idx.reshape(-1, idx.shape[-1]), ok_all):
        assert row[ok].unique().numel() == int(ok.sum())


def test_quest_page_metadata_grows_in_place_as_decoding_fills_pages():
    """Pages completed during decoding are appended to the min/max summaries (equal to summarising the whole cache
    at once), in buffers that grow by doubling: a few reallocations over a long generation, not one per page."""
    from leanformer.sparse.decode.quest import page_minmax

    torch.manual_seed(0)
    m = sparse.build_decode("quest", page_size=4, token_budget=16)
    k = torch.randn(2, 2, 200, 8)
    m.observe_prefill(0, None, k[:, :, :30], None)
    buffers = set()
    for length in range(30, 201):
        kmin, kmax = m._metadata(0, k[:, :, :length])
        ref_min, ref_max = page_minmax(k[:, :, :length], 4, 0, length // 4)
        assert torch.equal(kmin, ref_min) and torch.equal(kmax, ref_max)
        buffers.add(m.state[0]["buf"].data_ptr())
    assert len(buffers) <= 4  # 7 pages at the start, 50 at the end: capacity 7 -> 14 -> 28 -> 56
    # a new, shorter sequence starts over
    kmin, _ = m._metadata(0, k[:, :, :9])
    assert torch.equal(kmin, page_minmax(k[:, :, :9], 4, 0, 2)[0])


def test_quest_bound_and_page_choice():
    q, k, v = _setup(b=1, hq=4, hk=2, t=64)
    m, (_, info) = _run("quest", None, q, k, v, token_budget=16)
    kmin, kmax = m._metadata(0, k)
    qs = q[:, :, -1:]
    scores = page_scores(qs, kmin, kmax, share_gqa=False)  # [1, 4, P]
    dots = (qs @ k.repeat_interleave(2, 1).transpose(-1, -2))[:, :, 0].reshape(1, 4, 16, 4)
    assert (scores + 1e-5 >= dots.amax(-1)).all(), "page score must upper-bound every dot product in the page"
    idx, valid, _ = m.select(0, qs, k, None)
    pages = set((idx[0, 0] // 4).tolist())
    assert 15 in pages and len(pages) == 4  # current page + top 3
    shared = page_scores(qs, kmin, kmax, share_gqa=True)[0, 0, :15]
    chosen = sorted(pages - {15})
    others = [p for p in range(15) if p not in pages]
    assert shared[chosen].min() >= shared[others].max()


def test_snapkv_keeps_forced_and_top_scored():
    from leanformer.sparse.decode.common import prompt_key_scores

    q, k, v = _setup(b=1, hq=4, hk=2, t=80)
    m, _ = _run("snapkv", None, q, k, v, capacity=20)
    idx, _ = m.state[0]["kept"][20]
    t0 = 79
    scores = prompt_key_scores(q[:, :, :t0], k[:, :, :t0], 8, 16 ** -0.5, "mean", 3)
    for h in range(2):
        kept = set(idx[0, h].tolist())
        assert {0, 1} | set(range(t0 - 4, t0)) <= kept and len(kept) == 20
        free = [j for j in range(2, t0 - 4)]
        ranked = sorted(free, key=lambda j: -scores[0, h, j].item())[:14]
        assert set(ranked) <= kept


def test_ada_snapkv_shares_budget_with_floor():
    q, k, v = _setup(b=2, hq=8, hk=4, t=90)
    m, (_, info) = _run("ada_snapkv", None, q, k, v, capacity=20, floor=0.5)
    idx, valid = m.state[0]["kept"][20]
    counts = valid.sum(-1)
    assert (counts.sum(-1) == 20 * 4).all()
    assert (counts >= 10).all()
    assert float(info["keys_read"]) == float(counts.sum() + 2 * 4 * 1)  # plus the one token after the prompt


def test_gather_paths_match_reference_both_layouts():
    g = torch.Generator().manual_seed(42)
    q = torch.randn(2, 6, 1, 8, generator=g)
    k, v = torch.randn(2, 3, 33, 8, generator=g), torch.randn(2, 3, 33, 8, generator=g)
    for hs in (3, 6):
        idx = torch.sort(torch.rand(2, hs, 33, generator=g).topk(10, -1).indices, -1).values
        valid = torch.rand(2, hs, 10, generator=g) < 0.7
        valid[..., 0] = True
        for vv in (None, valid):
            ref = gather_decode_reference(q, k, v, idx, vv)
            torch.testing.assert_close(gather_decode_attention(q, k, v, idx, vv), ref)


def test_snapkv_without_prefill_is_a_user_error():
    q, k, v = _setup(t=20)
    m = sparse.build_decode("snapkv")
    with pytest.raises(UserError, match="observe_prefill"):
        m.attend(0, q[:, :, -1:], k, v)
    with pytest.raises(UserError, match="one step"):
        sparse.build_decode("quest").attend(0, q, k, v)


def test_quest_page_choice_launch_width():
    """The page choice's default warps: ~16 pages a thread (4 to 8 warps) for a few heads, 4 for many; other widths
    are refused in one line before any launch."""
    from leanformer.sparse.kernels.quest_scores import select_pages_triton, select_warps

    assert [select_warps(n, 4) for n in (16, 2048, 4096, 8192, 16384)] == [4, 4, 8, 8, 8]
    assert [select_warps(n, 64) for n in (2048, 16384)] == [4, 4]
    q, pages = torch.randn(1, 4, 1, 16), torch.randn(1, 2, 64, 16)
    with pytest.raises(ValueError, match="num_warps=3"):
        select_pages_triton(q, pages, pages, 4, True, num_warps=3)


def test_ada_snapkv_keep_without_a_device_read_keeps_the_same_keys():
    """``exact_width=False`` (the engine's prefill: no host sync) pads each head's list to a bound the host knows;
    the kept positions are the exact call's."""
    m = sparse.build_decode("ada_snapkv")
    scores = torch.randn(2, 4, 600, generator=torch.Generator().manual_seed(3)) ** 3
    scores[:, 0] *= 10  # one head takes most of the shared budget
    idx, valid = m.keep(scores, 200)
    idx2, valid2 = m.keep(scores, 200, exact_width=False)
    counts = valid.sum(-1)
    assert counts.min() < counts.max() < idx2.shape[-1]  # uneven heads; the bound pads past the largest
    assert idx.shape[-1] == counts.max()
    for b in range(2):
        for h in range(4):
            assert idx[b, h][valid[b, h]].tolist() == idx2[b, h][valid2[b, h]].tolist()
    assert int(valid2.sum()) == 2 * 4 * 200
