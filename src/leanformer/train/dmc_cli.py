"""``leanformer dmc retrofit|gqa CHECKPOINT --target-cr 4 --budget STEPS --out DIR``: compress the KV cache of a
pretrained LM by Dynamic Memory Compression (``retrofit``) or by GQA uptraining (``gqa``, the baseline).

CHECKPOINT is one of our ``gpt`` runs/checkpoints or a Hugging Face Llama directory (then give ``--data``).
``leanformer eval DIR`` afterwards reports bits per byte and, for DMC, the compression ratio per layer and head.
"""

from __future__ import annotations

import argparse
import json

_FLAGS = ("target_cr", "budget", "zero_out_steps", "finetune_fraction", "lr", "batch_size", "seq_len", "window",
          "temperature", "device", "eval_every", "eval_batches", "seed")


def add_parser(sub, name: str) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help="compress the KV cache: DMC retrofitting or the GQA-uptraining baseline",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    for action, text in (("retrofit", "DMC: zero-out, retrofit (ramped ratio), fine-tune"),
                         ("gqa", "mean-pool key/value heads, then continue training")):
        a = actions.add_parser(action, help=text)
        a.add_argument("checkpoint", help="our run/checkpoint directory, or a Hugging Face Llama directory")
        a.add_argument("--out", required=True, help="run directory to write (resumes when it holds checkpoints)")
        a.add_argument("--config", default=None, help="YAML with retrofit settings (e.g. configs/dmc/shakespeare.yaml)")
        a.add_argument("--target-cr", type=float, default=None, help="compression ratio to reach (default 4)")
        a.add_argument("--budget", type=int, default=None, help="optimizer steps over all stages (default 1000)")
        a.add_argument("--zero-out-steps", type=int, default=None)
        a.add_argument("--finetune-fraction", type=float, default=None)
        a.add_argument("--lr", type=float, default=None)
        a.add_argument("--batch-size", type=int, default=None)
        a.add_argument("--seq-len", type=int, default=None)
        a.add_argument("--window", type=int, default=None)
        a.add_argument("--temperature", type=float, default=None)
        a.add_argument("--device", default=None)
        a.add_argument("--eval-every", type=int, default=None)
        a.add_argument("--eval-batches", type=int, default=None)
        a.add_argument("--seed", type=int, default=None)
        a.add_argument("--data", default=None, help="data source (required for Hugging Face checkpoints)")
        a.add_argument("--no-progress", action="store_true")
    return p


def run(args) -> int:
    from leanformer.config import DataConfig, from_dict, load_yaml
    from leanformer.train.dmc_retrofit import RetrofitConfig, gqa_uptrain, retrofit

    raw = load_yaml(args.config) if args.config else {}
    raw.update({k: getattr(args, k) for k in _FLAGS if getattr(args, k) is not None})
    if args.no_progress:
        raw["progress"] = False
    rc = from_dict(RetrofitConfig, raw, prefix="dmc")
    data = DataConfig(source=args.data, seq_len=rc.seq_len or 256) if args.data else None
    fn = retrofit if args.action == "retrofit" else gqa_uptrain
    print(json.dumps(fn(args.checkpoint, args.out, rc, data)))
    return 0
