"""Shared fixtures for the sparse-attention tests: seeded random q/k/v with GQA and odd lengths."""

from __future__ import annotations

import pytest
import torch

from leanformer.nn.attention import attention

# small-shape settings that keep forced lines/blocks from covering the whole prompt
SMALL = {
    "dense": {},
    "block_topk": {"block_size": 8, "topk": 3},
    "vertical_slash": {"block_size": 8, "window": 16, "local": 8, "sinks": 2, "vertical_size": 5, "slash_size": 5},
    "flexprefill": {"block_size": 8, "window": 16, "local": 8, "sinks": 2, "min_budget": 4},
    "streaming": {"block_size": 8, "local": 16, "sinks": 2},
}


def make_qkv(b=2, hq=4, hk=2, t=77, d=16, dtype=torch.float32, seed=42):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(b, h, t, d, generator=g).to(dtype) for h in (hq, hk, hk))


def masked_reference(q, k, v, mask, scale=None):
    """fp32 attention under a boolean ``[B, H_q, T_q, T_k]`` mask."""
    return attention(q.float(), k.float(), v.float(), causal=False, mask=mask, scale=scale, backend="math")


@pytest.fixture
def qkv():
    return make_qkv()


@pytest.fixture
def helpers():
    """``SMALL`` params, ``make_qkv`` and ``masked_reference`` for tests (importlib mode cannot import conftest)."""
    import types

    return types.SimpleNamespace(SMALL=SMALL, make_qkv=make_qkv, masked_reference=masked_reference)


def pytest_collection_modifyitems(config, items):
    """The small shapes here ask many methods for more sparsity than a short prompt allows, on purpose; their
    ``SparsityWarning`` is tested where it is the subject (``test_warnings.py``, with ``pytest.warns``) and
    silenced elsewhere so the suite's summary shows only warnings that need a look."""
    here = __file__.rsplit("/", 1)[0]
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(pytest.mark.filterwarnings("ignore::leanformer.sparse.base.SparsityWarning"))
