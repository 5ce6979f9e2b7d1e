"""benchmarks/count_prefill_ops.py: the PyTorch ops a line method's call issues, with the line patterns'
bookkeeping in PyTorch and on the GPU's path (its launches faked or counted once)."""

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
    kernels = count_prefill_ops.count(method, 2048, 0.5, heads=4, kv_heads=2, gpu_path=True)
    assert any("column_cost" in site for site in pytorch) and any("from_lines" in site for site in pytorch)
    assert not any(site.endswith(("column_cost", ": from_lines")) for site in kernels)
    assert any("line_pattern.py" in site for site in kernels)
    assert sum(kernels.values()) < sum(pytorch.values()) - 30


def test_flexprefill_launched_steps_count_once_on_the_gpu_path():
    """The budget split, the query-aware test, coverage counts and row tiles: many ops in PyTorch, one each on the
    GPU's path."""
    pytorch = count_prefill_ops.count("flexprefill", 2048, 0.5, heads=4, kv_heads=2)
    gpu = count_prefill_ops.count("flexprefill", 2048, 0.5, heads=4, kv_heads=2, gpu_path=True)
    for name in ("water_fill", "block_distance", "coverage_rows", "block_tiles_rows"):
        assert gpu[count_prefill_ops.LAUNCH + name] == 1
        assert not any(name in site for site in gpu if not site.startswith(count_prefill_ops.LAUNCH))
    assert sum(v for k, v in pytorch.items() if "budget.py" in k) > 10


def test_kernel_steps_counts_the_patterns_tiles_and_column_steps():
    steps = count_prefill_ops.kernel_steps("vertical_slash", 4096, 0.9, heads=2, kv_heads=1, bn=128)
    assert abs(steps["sparsity"] - 0.9) < 0.02
    assert steps["tile_steps"] >= 2 * 32  # every query block computes its own diagonal block
    assert 0 < steps["column_steps"] and steps["columns"] <= steps["column_steps"] * 128
