"""The lookup probe (benchmarks/probe_lookup.py) on the CPU: it scores every asked name of the drill rows once, and
it tells the two skills apart on the shipped long reference, which copies a name once started (later tokens) far
better than it finds the name written before a value (first token) — the gap docs/study.md reports."""

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("probe_lookup", ROOT / "benchmarks" / "probe_lookup.py")
probe_lookup = sys.modules.setdefault("probe_lookup", importlib.util.module_from_spec(spec))
spec.loader.exec_module(probe_lookup)


def test_probe_counts_each_asked_name_once_and_separates_lookup_from_copying():
    import numpy as np

    from leanformer.reference.mixture import lookup_rows
    from leanformer.train.checkpoint import load_tokenizer

    model = ROOT / "src" / "leanformer" / "assets" / "reference-long"
    res = probe_lookup.probe(str(model), rows=4, width=833, seed=123)
    tok = load_tokenizer(model)
    ids, learn = lookup_rows(4, 833, tok, tok.pad_id, np.random.default_rng(123))
    text = " ".join(tok.decode(row[row != tok.pad_id].tolist()) for row in ids)
    queries = text.count(":")                       # one colon a query; statements have none
    starts = int((learn[:, 1:] & ~learn[:, :-1]).sum())
    assert res["names"] == starts == queries > 50
    assert res["first_token"]["accuracy"] + 0.3 < res["later_tokens"]["accuracy"]
    assert res["first_token"]["nll"] > 2 * res["later_tokens"]["nll"]
