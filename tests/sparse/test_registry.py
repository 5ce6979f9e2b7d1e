"""Registries: the names other parts rely on, kept in sync with the method classes."""

from __future__ import annotations

import dataclasses

import pytest

from leanformer import sparse
from leanformer.sparse.base import DecodeMethod, PrefillMethod


def test_registry_names():
    assert set(sparse.PREFILL_METHODS) == {"dense", "block_topk", "vertical_slash", "flexprefill", "streaming"}
    assert set(sparse.DECODE_METHODS) == {"dense", "quest", "snapkv", "ada_snapkv", "streaming"}
    assert all(callable(f) for f in (sparse.prefill_attention, sparse.apply, sparse.decode_attention))


@pytest.mark.parametrize("name,cls", list(sparse.PREFILL_METHODS.items()) + list(sparse.DECODE_METHODS.items()))
def test_each_method_names_itself_and_cites_its_paper(name, cls):
    assert cls.name == name
    assert issubclass(cls, PrefillMethod) or issubclass(cls, DecodeMethod)
    assert dataclasses.is_dataclass(cls.Params) and "impl" in {f.name for f in dataclasses.fields(cls.Params)}
    import sys

    doc = sys.modules[cls.__module__].__doc__
    assert name == "dense" or any(c.isdigit() for c in doc), "docstring must cite a paper (with its year)"
