"""``leanformer analyze STORE --out DIR``: figures, CSV tables and a Markdown report from a results store.

Imports nothing heavy at module import time (numpy / matplotlib load in :func:`run`).
"""

from __future__ import annotations

import argparse
import os

from leanformer.errors import UserError


def add_parser(subparsers, name: str = "analyze") -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        name, help="analyse a sweep results store: isoFLOPS, safe sparsity, scaling laws, report with plots",
        description="Read a results store (SQLite written by `leanformer frontier`) and write PNG figures, CSV "
                    "tables and report.md into --out.")
    p.add_argument("store", help="results store (SQLite file)")
    p.add_argument("--out", required=True, help="output directory for report.md, *.png, *.csv")
    p.add_argument("--length", type=int, default=None, help="length shown in figures/tables (default: longest)")
    p.add_argument("--methods", nargs="+", default=None, metavar="METHOD",
                   help="analyse only these methods (and dense), named as the report names them: vertical_slash "
                        "leaves out vertical_slash[dense_layers=[0]] (default: every method in the store)")
    p.add_argument("--models", nargs="+", default=None, metavar="MODEL",
                   help="analyse only these models, named as the store names them (default: every model)")
    g = p.add_argument_group("accuracy preservation")
    g.add_argument("--alpha", type=float, default=0.05, help="significance level (default 0.05)")
    g.add_argument("--margin", type=float, default=0.0, help="non-inferiority margin in score units (default 0)")
    g.add_argument("--test", default="bootstrap", choices=("bootstrap", "permutation", "sign"))
    g.add_argument("--correction", default="holm", choices=("holm", "fixed_sequence", "none"))
    g.add_argument("--framing", default="degradation", choices=("degradation", "noninferiority"),
                   help="degradation: a level fails when a drop is found; noninferiority: a level passes only "
                        "when a drop beyond --margin is ruled out")
    g.add_argument("--n-boot", type=int, default=2000, help="bootstrap / permutation resamples (default 2000)")
    g.add_argument("--min-dense", type=float, default=0.1,
                   help="leave out (model, task, length) groups whose dense accuracy is below this: no drop can show "
                        "there, so every sparsity would look safe (default 0.1; 0 keeps every group)")
    g = p.add_argument_group("iso-cost and scaling")
    g.add_argument("--cost", default="phase", choices=("phase", "prefill", "decode", "total"),
                   help="FLOPs on the cost axis (phase: those of the phase made sparse)")
    g.add_argument("--slack", type=float, default=1.0, help="a larger model's point may cost up to slack x the "
                                                            "smaller dense one (default 1)")
    g.add_argument("--target", default="accuracy", choices=("accuracy", "error", "log_error"))
    g.add_argument("--interactions", action="store_true", help="add ln N x ln CR and ln L x ln CR terms")
    g.add_argument("--rel-error", type=float, default=0.05, help="relative error for the budget-vs-length fit")
    p.add_argument("--synthetic", action="store_true",
                   help="first write a synthetic store with known structure to STORE (must not exist): a demo")
    return p


def run(args: argparse.Namespace) -> int:
    from leanformer.analysis.report import ReportOptions, build_report
    from leanformer.reliability import check_output_dir

    check_output_dir(args.out, 0, "the report")  # read-only or full: fail before reading the store
    if args.synthetic:
        if os.path.exists(args.store):
            raise UserError(f"--synthetic: {args.store!r} exists; give a new path for the synthetic store")
        from leanformer.analysis.synthetic import write_synthetic_store

        write_synthetic_store(args.store, lengths=(16384, 32768, 65536, 131072))
    if not 0 < args.alpha < 1:
        raise UserError(f"--alpha {args.alpha}: must be in (0, 1)")
    if not 0 <= args.min_dense < 1:
        raise UserError(f"--min-dense {args.min_dense}: must be in [0, 1)")
    if args.n_boot < 100:
        raise UserError(f"--n-boot {args.n_boot}: use at least 100 resamples")
    opts = ReportOptions(length=args.length, alpha=args.alpha, margin=args.margin, test=args.test,
                         correction=args.correction, framing=args.framing, n_boot=args.n_boot, target=args.target,
                         interactions=args.interactions, cost=args.cost, slack=args.slack, rel_error=args.rel_error,
                         min_dense=args.min_dense, methods=tuple(args.methods) if args.methods else None,
                         models=tuple(args.models) if args.models else None)
    path = build_report(args.store, args.out, opts)
    print(f"wrote {path}")
    return 0
