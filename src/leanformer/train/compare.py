"""``leanformer compare CONFIG [key=value ...] --budget 10m --methods baseline,stacking,... --seeds 3 --out DIR``:
train each method under the same reference-system-time budget and report whether it beats the baseline.

The protocol of "No Train No Gain" (Kaddour et al., 2023): every run gets the same RST budget (:mod:`leanformer.
train.rst`; the table is calibrated into ``DIR/rst.json`` unless ``--rst-table`` is given), and every schedule is
driven by the RST fraction, so the **baseline** (the config's optimizer, AdamW by default, with its LR decayed
fully to the floor exactly at the budget) is a properly tuned reference rather than a run cut short. Methods:

- ``baseline``: the config as given.
- ``stacking``, ``layerdrop``, ``selective_backprop``, ``rho``: the config plus that method's trainer hook
  (:mod:`leanformer.train.methods`).
- ``lion``: ``optim.name=lion``, LR x 0.3, weight decay x 3, betas (0.9, 0.99) (the Lion paper's advice).
- ``sophia``: ``optim.name=sophia`` (Sophia-G), LR x 0.5, betas (0.965, 0.99), rho from the config.

``--set METHOD:key=value`` changes one method only: a dotted key is a run-config override
(``--set lion:optim.lr=1e-3``), a plain key a hook argument (``--set stacking:optimizer_state=copy``).

Runs live in ``DIR/<method>/seed<k>/`` (seed = config seed + k) and are ordinary resumable training runs; a
finished run leaves ``result.json`` and is skipped, so re-running the same command resumes the comparison (and
adding methods or seeds extends it). The report (``compare.md``, ``compare_summary.json``, ``compare.png``: validation
loss against RST) is rewritten at the end; see :mod:`leanformer.train.compare_report`.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

ALL_METHODS = ("baseline", "stacking", "layerdrop", "selective_backprop", "rho", "lion", "sophia")
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}


def parse_budget(text: str) -> float:
    """``'90'``, ``'90s'``, ``'10m'``, ``'1.5h'`` -> seconds."""
    from leanformer.errors import UserError

    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e-?[0-9]+)?)\s*([smh]?)\s*", str(text))
    if not m or float(m.group(1)) <= 0:
        raise UserError(f"--budget {text!r} is not a positive duration; e.g. 90s, 10m, 1.5h")
    return float(m.group(1)) * _UNITS[m.group(2) or "s"]


def optimizer_overrides(method: str, cfg) -> list[str]:
    o = cfg.optim
    if method == "lion":
        return ["optim.name=lion", f"optim.lr={o.lr * 0.3!r}", f"optim.weight_decay={o.weight_decay * 3!r}",
                "optim.betas=[0.9, 0.99]"]
    if method == "sophia":
        return ["optim.name=sophia", f"optim.lr={o.lr * 0.5!r}", "optim.betas=[0.965, 0.99]"]
    return []


def parse_sets(items: list[str], methods: list[str]) -> dict[str, tuple[list[str], dict]]:
    import yaml

    from leanformer.errors import UserError

    out: dict[str, tuple[list[str], dict]] = {m: ([], {}) for m in methods}
    for item in items:
        m, sep, kv = item.partition(":")
        if not sep or "=" not in kv or m not in out:
            raise UserError(f"--set {item!r}: expected METHOD:key=value with METHOD one of {', '.join(methods)}")
        key, value = kv.split("=", 1)
        if "." in key:
            out[m][0].append(kv)
        else:
            out[m][1][key] = yaml.safe_load(value)
    return out


def run_compare(config: str, overrides: list[str], budget_s: float, methods: list[str], seeds: int, out: Path,
                rst_table: str | None = None, sets: dict | None = None, evals: int = 8, repeats: int = 5) -> dict:
    """Train every (method, seed) not yet finished under ``out``, then write and return the report."""
    from leanformer.config import load_run_config
    from leanformer.errors import UserError
    from leanformer.train.compare_report import write_report
    from leanformer.train.methods import METHODS, build_method
    from leanformer.train.rst import RSTTable, calibrate
    from leanformer.train.trainer import Trainer

    unknown = [m for m in methods if m not in ALL_METHODS]
    if unknown:
        raise UserError(f"--methods: unknown method {unknown[0]!r}; choose from {', '.join(ALL_METHODS)}")
    sets = sets or {}
    base = load_run_config(config, ["trainer.progress=false", *overrides])
    out.mkdir(parents=True, exist_ok=True)
    manifest = {"config": base.to_raw(), "budget_s": budget_s}
    mpath = out / "compare.json"
    if mpath.is_file():
        old = json.loads(mpath.read_text())
        if old != manifest:
            raise UserError(f"{out} holds a comparison with another config or budget ({old['budget_s']:g} s); "
                            "use another --out")
    else:
        mpath.write_text(json.dumps(manifest, indent=2))
    table_path = Path(rst_table) if rst_table else out / "rst.json"
    if not table_path.is_file():
        if rst_table:
            raise UserError(f"--rst-table {table_path} not found")
        print(f"leanformer: calibrating reference system time into {table_path}")
        calibrate(base, repeats=repeats).save(table_path)
    table = RSTTable.load(table_path).check(base)
    t = base.trainer
    step_s = t.grad_accum * table.fwd_bwd_seconds(1.0, t.batch_size) + table.optimizer_step.get(base.optim.name, 0.0)
    every = max(1, int(budget_s / step_s) // evals)
    budget = ["trainer.max_steps=null", "trainer.max_tokens=null", f"trainer.max_seconds={budget_s!r}",
              f"trainer.rst_table={table_path.resolve()}", f"trainer.eval_every={every}", f"trainer.ckpt_every={every}"]
    for method in methods:
        cfg_over, kwargs = sets.get(method, ([], {}))
        for k in range(seeds):
            run_dir = out / method / f"seed{k}"
            if (run_dir / "result.json").is_file():
                continue
            cfg = load_run_config(config, ["trainer.progress=false", *overrides, *budget,
                                           *optimizer_overrides(method, base), *cfg_over, f"seed={base.seed + k}"])
            hooks = [build_method(method, **kwargs)] if method in METHODS else []
            print(f"leanformer: compare {method} seed {k} -> {run_dir}")
            trainer = Trainer(cfg, run_dir, hooks=hooks)
            r = trainer.fit()
            result = {"method": method, "seed": cfg.seed, "step": r["step"], "clock_s": trainer.clock.seconds,
                      "elapsed_s": r["elapsed_s"], "val_loss": r["last_eval"]["loss"], "last_eval": r["last_eval"]}
            (run_dir / "result.json").write_text(json.dumps(result, indent=2))
    title = f"{Path(config).stem}: validation loss vs RST (budget {budget_s:g} s)"
    return write_report(out, [m for m in ALL_METHODS if m in methods], budget_s, title)


def add_parser(sub, name: str) -> argparse.ArgumentParser:
    from leanformer.cli_overrides import add_config_arguments, add_device_argument

    p = sub.add_parser(name, help="compare efficient-training methods under one reference-system-time budget",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(p, help="a YAML config (e.g. configs/gpt-shakespeare.yaml) and overrides like "
                                 "trainer.batch_size=8 for every method, in any order among the flags")
    p.add_argument("--budget", required=True, help="RST budget per run: 90s, 10m, 1.5h")
    p.add_argument("--methods", default=",".join(ALL_METHODS), help=f"comma list (default: {','.join(ALL_METHODS)})")
    p.add_argument("--seeds", type=int, default=3, help="seeds per method (default 3)")
    p.add_argument("--out", default=None, help="comparison directory (default: runs/compare/<config name>)")
    p.add_argument("--rst-table", default=None, help="use this RST table instead of calibrating into OUT/rst.json")
    p.add_argument("--set", action="append", default=[], metavar="METHOD:key=value",
                   help="per-method config override (dotted key) or hook argument (plain key); repeatable")
    p.add_argument("--evals", type=int, default=8, help="evaluations per baseline run (default 8)")
    add_device_argument(p, default=None, help="shorthand for trainer.device=DEVICE (cpu, cuda)")
    return p


def run(args) -> int:
    from leanformer.cli_overrides import config_arguments, with_device
    from leanformer.errors import UserError

    (config,), overrides = config_arguments(
        args, required=1, example="leanformer compare configs/gpt-shakespeare.yaml --budget 2m")
    if args.seeds < 1 or args.evals < 1:
        raise UserError(f"--seeds and --evals must be >= 1 (got {args.seeds}, {args.evals})")
    overrides = with_device(overrides, args.device or None, "trainer.device")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    out = Path(args.out) if args.out else Path("runs") / "compare" / Path(config).stem
    summary = run_compare(config, overrides, parse_budget(args.budget), methods, args.seeds, out, args.rst_table,
                          parse_sets(args.set, methods), args.evals)
    print(summary["table"], end="")
    print(json.dumps({"out": str(out), "plot": summary["plot"]}))
    return 0
