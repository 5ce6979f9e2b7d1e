"""``leanformer dmc retrofit|gqa CHECKPOINT [CONFIG] [key=value ...] --out DIR``: compress the KV cache of a
pretrained LM by Dynamic Memory Compression (``retrofit``) or by GQA uptraining (``gqa``, the baseline).

CHECKPOINT is one of our ``gpt`` runs/checkpoints or a Hugging Face Llama directory (then give ``--data``). CONFIG
is a YAML file of retrofit settings (``configs/dmc/shakespeare.yaml``); ``key=value`` overrides any of them, e.g.
``target_cr=4 budget=1000 eval_every=100`` (see :class:`~leanformer.train.dmc_retrofit.RetrofitConfig`).
``leanformer eval DIR`` afterwards reports bits per byte and, for DMC, the compression ratio per layer and head.
"""

from __future__ import annotations

import argparse
import json

EXAMPLE = "leanformer dmc retrofit runs/gpt configs/dmc/shakespeare.yaml target_cr=4 --out runs/dmc4"
# Flags of earlier versions that duplicated a config field: hidden aliases of the override.
_OLD_FLAGS = {f"--{k.replace('_', '-')}": k for k in (
    "target_cr", "budget", "zero_out_steps", "finetune_fraction", "lr", "batch_size", "seq_len", "window",
    "temperature", "eval_every", "eval_batches", "seed")}


def add_parser(sub, name: str) -> argparse.ArgumentParser:
    from leanformer.cli_overrides import add_config_arguments, add_deprecated_flags, add_device_argument

    p = sub.add_parser(name, help="compress the KV cache: DMC retrofitting or the GQA-uptraining baseline",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    for action, text in (("retrofit", "DMC: zero-out, retrofit (ramped ratio), fine-tune"),
                         ("gqa", "mean-pool key/value heads, then continue training")):
        a = actions.add_parser(action, help=text, description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
        add_config_arguments(a, ("CHECKPOINT", "CONFIG"),
                             help="our run/checkpoint directory or a Hugging Face Llama directory, optionally a "
                                  "YAML of retrofit settings, then overrides like target_cr=4 budget=1000")
        a.add_argument("--out", required=True, help="run directory to write (resumes when it holds checkpoints)")
        a.add_argument("--config", default=None, help=argparse.SUPPRESS)  # older spelling of CONFIG
        add_device_argument(a, default=None, help="where to train (default: the config's device, auto)")
        a.add_argument("--data", default=None, help="data source (required for Hugging Face checkpoints)")
        add_deprecated_flags(a, {**_OLD_FLAGS, "--no-progress": ("progress", "false")})
    return p


def run(args) -> int:
    from leanformer.cli_overrides import build_config, config_arguments, legacy_config, with_device
    from leanformer.config import DataConfig
    from leanformer.train.dmc_retrofit import RetrofitConfig, gqa_uptrain, retrofit

    (checkpoint, config), overrides = config_arguments(args, ("CHECKPOINT", "CONFIG"), required=1, example=EXAMPLE)
    config = legacy_config(config, "--config", args.config)
    overrides = with_device(overrides, args.device)
    rc = build_config(RetrofitConfig, config, overrides)
    data = DataConfig(source=args.data, seq_len=rc.seq_len or 256) if args.data else None
    fn = retrofit if args.action == "retrofit" else gqa_uptrain
    print(json.dumps(fn(checkpoint, args.out, rc, data)))
    return 0
