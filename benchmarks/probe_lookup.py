"""CPU probe: has a checkpoint learnt variable tracking's backward lookup in the assignment drills' own format?

Builds ``--rows`` drill rows (``leanformer.reference.mixture.lookup_rows``: chains of ``VAR NAME = VALUE.`` and
``VAR NEXT = VAR NAME.`` statements, then their steps asked as ``VALUE: NAME,`` / ``NAME: NEXT,``) with the
checkpoint's tokenizer, runs the model over them once and reports, for the first token of each asked name (the token
only the lookup can give) and for its later tokens (which copying the name can give), the share the model's argmax
gets right and the mean negative log-likelihood. The first token right about 1 in 26 times means no lookup (26
letters). Same seed, same rows: checkpoints compare on the same questions.

    PYTHONPATH=src python3 benchmarks/probe_lookup.py DIR [DIR ...]           # 8 rows of 833 tokens each
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import torch

from leanformer.reference.mixture import lookup_rows
from leanformer.train.checkpoint import load_model, load_tokenizer


def probe(model_dir: str, rows: int, width: int, seed: int) -> dict:
    model, tok = load_model(model_dir).eval(), load_tokenizer(model_dir)
    ids, learn = lookup_rows(rows, width, tok, tok.pad_id, np.random.default_rng(seed))
    x = torch.from_numpy(ids)
    with torch.no_grad():
        out = model(x[:, :-1])
        logits = (out.logits if hasattr(out, "logits") else out).float()
    nll = -torch.log_softmax(logits, -1).gather(-1, x[:, 1:, None])[..., 0].numpy()
    right = logits.argmax(-1).numpy() == ids[:, 1:]
    target = learn[:, 1:]
    first, later = target & ~learn[:, :-1], target & learn[:, :-1]
    def share(mask):
        return {"accuracy": round(float(right[mask].mean()), 3), "nll": round(float(nll[mask].mean()), 3)}

    return {"model": model_dir, "names": int(first.sum()), "first_token": share(first), "later_tokens": share(later)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", help="checkpoint folders (model.json, model.safetensors, tokenizer)")
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--width", type=int, default=833, help="tokens a row (512-token prompts + the answer margin)")
    ap.add_argument("--seed", type=int, default=123)
    args = ap.parse_args(argv)
    if args.rows < 1 or args.width < 64:
        ap.error(f"--rows {args.rows} / --width {args.width}: need at least 1 row of at least 64 tokens")
    for d in args.models:
        print(json.dumps(probe(d, args.rows, args.width, args.seed)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
