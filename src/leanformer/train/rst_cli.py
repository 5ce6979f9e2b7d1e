"""``leanformer rst calibrate CONFIG [key=value ...] --out rst.json``: time the config's model on this machine
(forward+backward and forward-only per micro-batch for every number of active layers, each optimizer's step) and
save the reference-system-time table that ``trainer.rst_table`` and ``leanformer compare`` charge against."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_parser(sub, name: str) -> argparse.ArgumentParser:
    from leanformer.cli_overrides import add_config_arguments

    p = sub.add_parser(name, help="reference system time (RST): calibrate the per-pass time table",
                       description=__doc__)
    actions = p.add_subparsers(dest="rst_action", metavar="ACTION")
    actions.required = True
    c = actions.add_parser("calibrate", help="time this machine for a config and save the RST table",
                           description=__doc__)
    add_config_arguments(c, help="a YAML config (e.g. configs/gpt-shakespeare.yaml) and overrides like "
                                 "model.n_layers=4, in any order among the flags")
    c.add_argument("--out", default=None, help="table path (default: runs/rst/<config name>.json)")
    c.add_argument("--repeats", type=int, default=5, help="timed repeats per entry (median); default 5")
    c.add_argument("--warmup", type=int, default=2, help="untimed warm-up calls per entry; default 2")
    return p


def run(args) -> int:
    from leanformer.cli_overrides import config_arguments
    from leanformer.config import load_run_config
    from leanformer.errors import UserError
    from leanformer.train.rst import calibrate

    (config,), overrides = config_arguments(args, required=1,
                                            example="leanformer rst calibrate configs/gpt-shakespeare.yaml")
    if args.repeats < 1 or args.warmup < 0:
        raise UserError(f"--repeats must be >= 1 and --warmup >= 0 (got {args.repeats}, {args.warmup})")
    cfg = load_run_config(config, overrides)
    out = Path(args.out) if args.out else Path("runs") / "rst" / f"{Path(config).stem}.json"
    table = calibrate(cfg, repeats=args.repeats, warmup=args.warmup)
    table.save(out)
    print(json.dumps({"table": str(out), "layers": table.layers, "fwd_bwd_s": table.fwd_bwd[-1],
                      "forward_s": table.forward[-1], "optimizer_step_s": table.optimizer_step,
                      "device": table.machine["device"]}))
    return 0
