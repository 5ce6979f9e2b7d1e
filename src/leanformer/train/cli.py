"""``leanformer train [CONFIG] [key=value ...] --out DIR [--restart]``: start a run, or resume it when DIR holds a
checkpoint.

On resume, CONFIG may be omitted (the run's saved ``config.yaml`` is used, overrides applied on top); the budget,
cadence, learning rate and schedule may change, the model, data, tokenizer and optimizer type may not (see
:mod:`leanformer.train.resume`). ``--restart`` starts over in DIR, keeping what was there in ``DIR/previous-N/``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

EXAMPLE = "leanformer train configs/gpt-shakespeare.yaml trainer.max_steps=100 --out runs/gpt"


def add_parser(sub, name: str) -> argparse.ArgumentParser:
    from leanformer.cli_overrides import add_config_arguments

    p = sub.add_parser(name, help="train a model (resumes when --out holds a checkpoint)", description=__doc__)
    add_config_arguments(p, help="a YAML config (e.g. configs/gpt-shakespeare.yaml) and overrides like "
                                 "trainer.max_steps=100, in any order among the flags; when resuming, CONFIG may "
                                 "be omitted")
    p.add_argument("--out", default=None, help="run directory (default: runs/<config name>)")
    p.add_argument("--restart", action="store_true",
                   help="start over in --out even if it holds a run (the old files move to OUT/previous-N/)")
    return p


def run_config(out: Path, config, overrides: list[str]):
    """The config of a run in ``out``: ``config`` + overrides, or, without ``config``, the run's saved
    ``config.yaml`` + overrides. Whether a resumed run may take it is the trainer's check."""
    from leanformer.config import load_run_config
    from leanformer.errors import UserError

    if config is not None:
        return load_run_config(config, overrides)
    if not (out / "config.yaml").is_file():
        raise UserError(f"no CONFIG given and {out} holds no run to resume; e.g. {EXAMPLE}")
    return load_run_config(out / "config.yaml", overrides)


def run(args) -> int:
    from leanformer.cli_overrides import config_arguments
    from leanformer.train.distributed import shutdown
    from leanformer.train.trainer import Trainer

    (config,), overrides = config_arguments(args, example=EXAMPLE)
    out = Path(args.out) if args.out else Path("runs") / (Path(config).stem if config else "default")
    trainer = Trainer(run_config(out, config, overrides), out, restart=args.restart)
    try:
        result = trainer.fit()
    finally:
        shutdown()  # the process group of a torchrun launch (trainer.distributed=ddp|fsdp2)
    if not trainer.dist.is_main:
        return 0
    summary = {"run_dir": str(out), "step": result["step"], "tokens": result["tokens"],
               "elapsed_s": round(result["elapsed_s"], 2)}
    if result["last_eval"]:
        summary.update({f"val_{k}": v for k, v in result["last_eval"].items() if isinstance(v, float)})
    print(json.dumps(summary))
    return 0
