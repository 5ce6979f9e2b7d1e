"""A requested sparsity a short prompt cannot reach: block top-k picks a smaller block size, and every method that
still misses the request says so once per instance (``SparsityWarning``), with the reachable range; the measured
sparsity is reported as always."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch

from leanformer import sparse
from leanformer.sparse.base import SparsityWarning


def _qkv(t, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, 2, t, 16, generator=g), torch.randn(1, 1, t, 16, generator=g), torch.randn(1, 1, t, 16,
                                                                                                       generator=g)


def _call(method, t, s, **params):
    """``(info, warnings)`` of one call of a fresh instance."""
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        _, info = sparse.build_prefill(method, **params)(*_qkv(t), sparsity=s)
    return info, [w for w in seen if issubclass(w.category, SparsityWarning)]


def test_block_topk_picks_a_block_size_that_reaches_the_request():
    """With 128-token blocks a request for 0.9 at 1,000 tokens reached only 0.46; the default now takes the largest
    tile that reaches it (16 tokens here) and stays at 128 on long prompts."""
    info, seen = _call("block_topk", 1000, 0.9)
    assert info["block_size"] == 16 and float(info["sparsity"]) >= 0.88 and not seen
    info, seen = _call("block_topk", 1000, 0.5)
    assert info["block_size"] == 64 and abs(float(info["sparsity"]) - 0.5) < 0.05 and not seen
    from leanformer.sparse.prefill.block_topk import choose_block_size

    assert choose_block_size(0.95, 131072, None) == (128, None) and choose_block_size(0.9, 32768, None)[0] == 128


def test_block_topk_warns_when_no_block_size_reaches():
    info, seen = _call("block_topk", 1000, 0.99)
    assert len(seen) == 1
    msg = str(seen[0].message)
    assert "block_topk" in msg and "0.99" in msg and "1000 tokens" in msg
    reach = float(re.search(r"\[0, ([0-9.]+)\]", msg).group(1))
    assert reach == pytest.approx(float(info["sparsity"]), abs=1e-3)  # the densest it must compute is what it did
    _, seen = _call("block_topk", 1000, 0.9, block_size=128)  # a block size the caller fixed is kept, with a warning
    assert len(seen) == 1 and "128 tokens" in str(seen[0].message)


def test_one_warning_per_instance():
    """Three layers' calls warn once; a second instance (a new session) warns again, although Python's default
    filter shows a message once per code location. Run as a plain script: the test runner sets its own filters."""
    script = textwrap.dedent("""
        import torch
        from leanformer import sparse
        q, k = torch.randn(1, 2, 256, 16), torch.randn(1, 1, 256, 16)
        for _ in range(2):
            m = sparse.build_prefill("vertical_slash")
            for _layer in range(3):
                m(q, k, k, sparsity=0.9)
    """)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stderr.count("SparsityWarning: vertical_slash: requested sparsity 0.9") == 2, res.stderr


@pytest.mark.parametrize("method,t", [("vertical_slash", 256), ("flexprefill", 256), ("streaming", 512)])
def test_short_prompts_warn_with_the_reachable_range(method, t):
    info, seen = _call(method, t, 0.9)
    assert len(seen) == 1, seen
    msg = str(seen[0].message)
    assert msg.startswith(method) and "out of reach" in msg
    reach = float(re.search(r"\[0, ([0-9.]+)\]", msg).group(1))
    assert float(info["sparsity"]) <= reach + 1e-3


@pytest.mark.parametrize("method,params", [("vertical_slash", {}), ("flexprefill", {"block_size": 32}),
                                           ("block_topk", {}), ("streaming", {})])
def test_reachable_requests_do_not_warn(method, params):
    info, seen = _call(method, 2048, 0.8, **params)
    assert not seen and abs(float(info["sparsity"]) - 0.8) < 0.05


def test_flexprefill_warns_when_its_query_aware_heads_cannot_reach():
    """Which heads are query-aware is known on the device only: the check is read once the flag reaches the host
    (at once on the CPU), without stalling the call."""
    info, seen = _call("flexprefill", 2048, 0.8, tau=10.0)
    assert info["query_aware_heads"].all() and len(seen) == 1
    assert "query-aware heads keep at least three" in str(seen[0].message)
    _, seen = _call("flexprefill", 2048, 0.8, tau=0.0)  # no query-aware head: the lines reach it
    assert not seen


def test_streaming_says_when_whole_blocks_miss_the_request():
    info, seen = _call("streaming", 512, 0.5)
    assert len(seen) == 1 and "gives 0.737" in str(seen[0].message)
    assert float(info["sparsity"]) == pytest.approx(0.737, abs=1e-3)


def test_quest_warns_when_pages_miss_the_request():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 2, 1, 16, generator=g), torch.randn(1, 1, 40, 16, generator=g)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        m = sparse.build_decode("quest")
        m.observe_prefill(0, q, k, k)
        _, info = m.attend(0, q, k, k, sparsity=0.5)
        m.attend(0, q, k, k, sparsity=0.5)
    seen = [w for w in seen if issubclass(w.category, SparsityWarning)]
    assert len(seen) == 1 and "quest" in str(seen[0].message) and "page" in str(seen[0].message)
    assert float(info["sparsity"]) == pytest.approx(1 - 24 / 40)


def test_the_reachable_bound_is_rounded_down_never_to_the_refused_request():
    from leanformer.sparse.base import unreachable_message

    msg = unreachable_message("vertical_slash", 0.9, 1023, 0.89985, "forced lines")
    assert "[0, 0.899]" in msg and "0.900" not in msg
