"""The shipped reference checkpoint's model card is reproduced by the frontier harness: the dense
accuracy the training script recorded per sample equals what `leanformer frontier` measures on the CPU for a slice
(the first samples of every task at the shortest length). Skips while no checkpoint is shipped."""

import json
from pathlib import Path

import pytest

from leanformer.eval import harness
from leanformer.eval.store import ResultsStore

SHIPPED = Path(__file__).resolve().parents[2] / "src" / "leanformer" / "assets" / "reference"
SLICE = 4


@pytest.mark.skipif(not (SHIPPED / "model.safetensors").is_file(), reason="no reference checkpoint shipped yet")
def test_harness_reproduces_the_model_card_on_a_slice(tmp_path):
    report = json.loads((SHIPPED / "training.json").read_text())
    assert "| task |" in (SHIPPED / "README.md").read_text()  # the card ships beside the weights
    acc = report["dense_accuracy"]
    length = min(int(L) for per in acc.values() for L in per)
    c = harness.load_config({"models": [str(SHIPPED)], "tasks": sorted(acc), "lengths": [length],
                             "samples": SLICE, "seed": 0, "chat_template": "off",
                             "max_new_tokens": report["config"].get("eval_max_new_tokens", 128),
                             "device": "cpu", "dtype": "fp32", "batch_size": SLICE, "progress": False,
                             "store": str(tmp_path / "r.db")})
    harness.run_sweep(c)
    with ResultsStore(c.store) as store:
        got = {(r["task"], r["sample"]): r["score"] for r in store.rows()}
    for task, per in acc.items():
        want = per[str(length)]["scores"][:SLICE]
        ours = [got[(task, i)] for i in range(SLICE)]
        # recorded on a GPU in bf16, replayed on the CPU in fp32: greedy decoding may part on a near tie, rarely
        assert sum(abs(a - b) for a, b in zip(ours, want)) <= 1.0, (task, ours, want)
