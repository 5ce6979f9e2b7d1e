"""Where does a checkpoint lose story_retrieval? (CPU is enough for the 6.7M reference model.)

Runs the frontier harness (dense, greedy, the evaluation seeds) on ``story_retrieval`` at each ``--lengths`` and
scores every query item on its own, then tabulates item accuracy by the queried chapter's number (bands of 5) and by
where that chapter starts in the prompt (absolute token position, bands of 1,024), so a failure that grows with the
chapter number can be told from one that grows with the distance into the context, and for every wrong item the chapter
its answer comes from (the chapter whose text first names it), as an offset from the chapter asked. Records
``probe_story_retrieval-*.json``.

    PYTHONPATH=src python3 benchmarks/probe_story_retrieval.py --lengths 2048 4096 --samples 6   # ~4 min, 2 cores
"""

from __future__ import annotations

import argparse
import collections
import re
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import record  # noqa: E402

from leanformer.eval import harness  # noqa: E402
from leanformer.eval.store import ResultsStore  # noqa: E402
from leanformer.tasks import get_task  # noqa: E402
from leanformer.tasks.base import normalize, split_items  # noqa: E402

SHIPPED = Path(__file__).resolve().parents[1] / "src" / "leanformer" / "assets" / "reference"
_KEYED = re.compile(r"\((\d+)\) (\w+) in chapter (\d+): ")


def item_table(rows: list[dict], tokenizer) -> list[dict]:
    """One record per query item of every stored row: length, chapter, token position of its chapter, correct."""
    task = get_task("story_retrieval")
    out = []
    for r in rows:
        sample = task.generate(tokenizer, int(r["length"]), int(r["seed"]))
        if sample.answer_text != r["answer"]:
            raise RuntimeError(f"regenerated sample {r['sample']} at {r['length']} differs from the stored one")
        queries = [(int(ch), attr) for _, attr, ch in _KEYED.findall(sample.meta["keyed_answer_text"])]
        pred = split_items(r["output"], keyed=True)
        text = normalize(sample.prompt)
        heads = [(m.start(), int(m.group(1))) for m in re.finditer(r"chapter (\d+)", text)]
        for i, ((ch, attr), gold) in enumerate(zip(queries, sample.answer)):
            head = sample.prompt.index(f"Chapter {ch}.")
            correct = i < len(pred) and pred[i] == normalize(gold)
            at = text.find(pred[i]) if i < len(pred) and pred[i] and not correct else -1
            source = [n for p, n in heads if p < at][-1] if at >= 0 and heads and heads[0][0] < at else None
            out.append({"length": int(r["length"]), "sample": int(r["sample"]), "chapter": ch, "attribute": attr,
                        "position": len(tokenizer.encode(sample.prompt[:head])), "correct": correct,
                        "wrong_from_offset": None if source is None else source - ch})
    return out


def bands(items: list[dict], key: str, width: int) -> dict:
    acc = collections.defaultdict(lambda: [0, 0])
    for it in items:
        b = acc[(it["length"], it[key] // width * width)]
        b[0] += it["correct"]
        b[1] += 1
    return {f"{L}/{lo}": {"correct": c, "items": n, "accuracy": round(c / n, 3)}
            for (L, lo), (c, n) in sorted(acc.items())}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(SHIPPED), help="a reference checkpoint folder (default: the shipped one)")
    ap.add_argument("--lengths", type=int, nargs="+", default=[2048, 4096])
    ap.add_argument("--samples", type=int, default=6)
    ap.add_argument("--max-new-tokens", type=int, default=320)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        c = harness.load_config({"models": [args.model], "tasks": ["story_retrieval"], "lengths": args.lengths,
                                 "samples": args.samples, "seed": 0, "chat_template": "off",
                                 "max_new_tokens": args.max_new_tokens, "device": "cpu", "dtype": "fp32",
                                 "batch_size": 1, "store": str(Path(tmp) / "r.db")})
        harness.run_sweep(c)
        with ResultsStore(c.store) as store:
            rows = store.rows()
    from leanformer.data import HFTokenizer

    items = item_table(rows, HFTokenizer.from_pretrained(args.model))
    result = {"model": args.model, "lengths": args.lengths, "samples": args.samples,
              "by_chapter": bands(items, "chapter", 5), "by_position": bands(items, "position", 1024),
              "wrong_by_offset": dict(sorted(collections.Counter(
                  "not in the prompt" if it["wrong_from_offset"] is None else f"{it['wrong_from_offset']:+d}"
                  for it in items if not it["correct"]).items())),
              "sample_scores": {f"{r['length']}/{r['sample']}": r["score"] for r in rows}}
    for name in ("by_chapter", "by_position"):
        print(f"{name} (length/band start: correct of items)")
        for k, v in result[name].items():
            print(f"  {k:>12}  {v['correct']:3d} / {v['items']:3d}  {v['accuracy']:.2f}")
    print("wrong items by the chapter their answer comes from, minus the chapter asked:", result["wrong_by_offset"])
    print("recorded", record("probe_story_retrieval", result))


if __name__ == "__main__":
    main()
