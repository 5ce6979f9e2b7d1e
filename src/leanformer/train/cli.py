"""``leanformer train [CONFIG] [key=value ...] --out DIR``: start a run, or resume it when DIR holds a checkpoint."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_parser(sub, name: str) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help="train a model (resumes when --out holds a checkpoint)",
                       description=__doc__)
    p.add_argument("args", nargs="*", metavar="CONFIG|key=value",
                   help="a YAML config (e.g. configs/gpt-shakespeare.yaml) followed by overrides like "
                        "trainer.max_steps=100; when resuming, CONFIG may be omitted")
    p.add_argument("--out", default=None, help="run directory (default: runs/<config name>)")
    return p


def split_args(items: list[str]) -> tuple[str | None, list[str]]:
    from leanformer.errors import UserError

    config, overrides = None, []
    for a in items:
        if "=" in a:
            overrides.append(a)
        elif config is None:
            config = a
        else:
            raise UserError(f"unexpected argument {a!r}: give one CONFIG file, then key=value overrides")
    return config, overrides


def run_config(out: Path, config, overrides: list[str]):
    """The config of a run in ``out``: its saved ``config.yaml`` when it holds a checkpoint to resume (overrides
    applied on top), else ``config``'s."""
    from leanformer.config import load_run_config
    from leanformer.errors import UserError
    from leanformer.train.checkpoint import latest_checkpoint

    if latest_checkpoint(out) is not None and (out / "config.yaml").is_file():
        return load_run_config(out / "config.yaml", overrides)
    if config is None:
        raise UserError(f"no CONFIG given and {out} holds no run to resume; e.g. leanformer train "
                        "configs/gpt-shakespeare.yaml --out runs/gpt")
    return load_run_config(config, overrides)


def run(args) -> int:
    from leanformer.train.distributed import shutdown
    from leanformer.train.trainer import Trainer

    config, overrides = split_args(args.args)
    out = Path(args.out) if args.out else Path("runs") / (Path(config).stem if config else "default")
    trainer = Trainer(run_config(out, config, overrides), out)
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
