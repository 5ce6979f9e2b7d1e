"""Each shipped reference checkpoint's model card is reproduced by the frontier harness: the dense accuracy the
training script recorded per sample equals what `leanformer frontier` measures on the CPU for a slice (the first
samples of every task at the card's shortest length). Skips a checkpoint the install does not ship."""

import json
from pathlib import Path

import pytest

from leanformer.eval import harness
from leanformer.eval.store import ResultsStore

ASSETS = Path(__file__).resolve().parents[2] / "src" / "leanformer" / "assets"


# (folder, samples per task, tasks): the long reference's shortest card length is 8K tokens, so it replays fewer
# samples of the tasks the long-context study rests on (the others sit near zero on its card)
@pytest.mark.parametrize("name, samples, tasks", [
    ("reference", 4, None), ("reference-long", 2, ["niah", "story_filtering", "story_retrieval"])])
def test_harness_reproduces_the_model_card_on_a_slice(tmp_path, name, samples, tasks):
    shipped = ASSETS / name
    if not (shipped / "model.safetensors").is_file():
        pytest.skip(f"no {name} checkpoint shipped")
    report = json.loads((shipped / "training.json").read_text())
    assert "| task |" in (shipped / "README.md").read_text()  # the card ships beside the weights
    acc = {t: per for t, per in report["dense_accuracy"].items() if tasks is None or t in tasks}
    length = min(int(L) for per in acc.values() for L in per)
    c = harness.load_config({"models": [str(shipped)], "tasks": sorted(acc), "lengths": [length],
                             "samples": samples, "seed": 0, "chat_template": "off",
                             "max_new_tokens": report["config"].get("eval_max_new_tokens", 128),
                             "device": "cpu", "dtype": "fp32", "batch_size": samples, "progress": False,
                             "store": str(tmp_path / "r.db")})
    harness.run_sweep(c)
    with ResultsStore(c.store) as store:
        got = {(r["task"], r["sample"]): r["score"] for r in store.rows()}
    for task, per in acc.items():
        want = per[str(length)]["scores"][:samples]
        ours = [got[(task, i)] for i in range(samples)]
        # recorded on a GPU in bf16, replayed on the CPU in fp32: greedy decoding may part on a near tie, rarely
        assert sum(abs(a - b) for a, b in zip(ours, want)) <= 1.0, (task, ours, want)
