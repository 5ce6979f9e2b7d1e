"""benchmarks/count_prefill_ops.py: the PyTorch ops a line method's call issues, with the line patterns'
bookkeeping in PyTorch and on the GPU's path (its launches faked)."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("count_prefill_ops", ROOT / "benchmarks" / "count_prefill_ops.py")
count_prefill_ops = importlib.util.module_from_spec(spec)
spec.loader.exec_module(count_prefill_ops)


@pytest.mark.parametrize("method", ["vertical_slash", "flexprefill"])
def test_the_gpu_path_builds_line_patterns_in_fewer_ops(method):
    pytorch = count_prefill_ops.count(method, 2048, 0.5, heads=4, kv_heads=2)
    kernels = count_prefill_ops.count(method, 2048, 0.5, heads=4, kv_heads=2, line_kernels=True)
    assert any("column_cost" in site for site in pytorch) and any("from_lines" in site for site in pytorch)
    assert not any(site.endswith(("column_cost", ": from_lines")) for site in kernels)
    assert any("line_pattern.py" in site for site in kernels)
    assert sum(kernels.values()) < sum(pytorch.values()) - 30
