"""Shared test setup: deterministic seeds, a private token cache, small thread count (CI has 2 cores)."""

import os

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed_and_cache(tmp_path_factory, monkeypatch):
    torch.manual_seed(42)
    monkeypatch.setenv("LEANFORMER_CACHE", str(tmp_path_factory.getbasetemp() / "lf-cache"))
    yield


def pytest_configure(config):
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
