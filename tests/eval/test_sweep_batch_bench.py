"""The batched-sweep benchmark's own logic on the CPU (benchmarks/bench_sweep_batch.py): both runs fill the same
cells, the throughput is per cell kind, and in fp32 the batched outputs equal batch 1's."""

import importlib.util
import json
import sys
from pathlib import Path

spec = importlib.util.spec_from_file_location(
    "bench_sweep_batch", Path(__file__).parents[2] / "benchmarks" / "bench_sweep_batch.py")
bench = sys.modules.setdefault("bench_sweep_batch", importlib.util.module_from_spec(spec))
spec.loader.exec_module(bench)


def test_batch_one_and_batched_runs_fill_the_same_cells_and_agree(tiny_model, tmp_path):
    res = bench.main(["--model", str(tiny_model), "--tasks", "niah", "--lengths", "700", "--prefill", "block_topk",
                      "--decode", "snapkv", "--sparsity", "0.5", "--samples", "3", "--max-new-tokens", "4",
                      "--device", "cpu", "--dtype", "fp32", "--tokenizer", "byte", "--out", str(tmp_path),
                      "--prefill-alone"])
    assert res["compared"] == 3 * 3 and res["same_outputs"] == res["compared"]  # dense, prefill, decode cells
    assert set(res["speedup"]) == {"dense", "prefill:block_topk", "decode:snapkv", "all"}
    assert all(v > 0 for v in res["samples_per_s"]["1"].values())
    assert set(res["speedup_prefill_alone"]) == set(res["speedup"])  # the ablation: the batch, prompts alone
    assert set(res["speedup_by_task"]) == {"niah"} and set(res["speedup_by_task"]["niah"]) == set(res["speedup"])
    assert 1 <= res["prompt_lengths_per_cell"]["niah"] <= 3
    saved = json.loads(next(tmp_path.glob("sweep_batch-*.json")).read_text())
    assert saved["results"]["batch"] == 3 and saved["commit"]
