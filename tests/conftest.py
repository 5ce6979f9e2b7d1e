"""Shared test setup: deterministic seeds, a private token cache, small thread count (CI has 2 cores)."""

import functools
import os
import subprocess
import sys
import textwrap

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


# The smallest kernel with what every Triton kernel of the project relies on: a loop bounded by a loaded value.
# Triton 3.6's interpreter cannot run it under NumPy >= 2.4 (``int()`` of a one-element array: "only 0-dimensional
# arrays can be converted to Python scalars"), as on the GPU machine's image; there the compiled kernels are checked
# by the GPU tests instead, and these skip rather than report the interpreter's failure as the kernels'.
PROBE = textwrap.dedent("""
    import torch, triton, triton.language as tl
    @triton.jit
    def count(X, O):
        pid = tl.program_id(0)
        acc = 0
        for j in range(0, tl.load(X + pid)):
            acc += 1
        tl.store(O + pid, acc)
    o = torch.zeros(2, dtype=torch.int32)
    count[(2,)](torch.tensor([3, 2], dtype=torch.int32), o)
    print(o.tolist())
""")


def _run(script: str, timeout: int):
    env = dict(os.environ, TRITON_INTERPRET="1")
    return subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=timeout)


@functools.cache
def _interpreter_problem() -> str | None:
    res = _run(PROBE, 120)
    if res.returncode == 0 and res.stdout.strip().splitlines()[-1] == "[3, 2]":
        return None
    import numpy
    import triton
    why = (res.stderr.strip().splitlines() or [res.stdout.strip()])[-1]
    return f"the Triton {triton.__version__} interpreter (NumPy {numpy.__version__}) cannot run a minimal kernel: {why}"


def _interpret(script: str, timeout: int = 300) -> str:
    """Run ``script`` under ``TRITON_INTERPRET=1`` in a fresh interpreter; its last printed line. Skips when
    the interpreter itself is broken here (see ``PROBE``)."""
    if (problem := _interpreter_problem()) is not None:
        pytest.skip(problem)
    res = _run(script, timeout)
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout.strip().splitlines()[-1]


@pytest.fixture
def triton_interpret():
    """``triton_interpret(script, timeout=300)``: the script's last printed line, run under the Triton interpreter
    in a subprocess (CPU); skips the test without triton or with an interpreter that cannot run kernels."""
    pytest.importorskip("triton")
    return _interpret
