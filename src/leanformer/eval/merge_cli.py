"""``leanformer merge INTO FROM [FROM ...]``: add the rows of one or more results stores to another.

Sweeps run apart — slices on different machines, a second model's cells, a GPU job's store brought home — meet in
one store for ``leanformer analyze``. A row is a finished sample keyed by ``(cell_key, sample)``; rows ``INTO``
already has are kept as they are, so merging twice adds nothing. Each ``FROM`` is only read, and goes in one
transaction: a failure leaves ``INTO`` as it was. A model name that two stores hold for different checkpoints is
refused (merging would mix their results), as ``leanformer frontier`` refuses to resume such a store.

Example::

    leanformer merge runs/frontier-long/results.db /tmp/gpu-job/frontier-long-shallow/results.db
"""

from __future__ import annotations

import argparse


def add_parser(subparsers, name: str) -> argparse.ArgumentParser:
    p = subparsers.add_parser(name, help="add the rows of results stores to another (sweeps run apart, analysed "
                                         "together)", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("into", metavar="INTO", help="the store to add to (created if missing)")
    p.add_argument("sources", metavar="FROM", nargs="+", help="stores whose rows are added (only read)")
    return p


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from leanformer.errors import UserError
    from leanformer.eval.store import ResultsStore, remove_if_empty

    for src in args.sources:  # every source must exist before INTO is created or touched
        if not Path(src).is_file():
            raise UserError(f"results store {src} does not exist (FROM must be a store a sweep wrote)")
    created = not Path(args.into).exists()
    try:
        with ResultsStore(args.into) as store:
            for src in args.sources:
                added, kept = store.merge(src)
                print(f"{src}: {added} rows added, {kept} already in {args.into}")
            total = store.count()
    finally:
        if created:
            remove_if_empty(args.into)  # a merge that added nothing leaves no empty store behind
    print(f"{args.into}: {total} rows")
    return 0
