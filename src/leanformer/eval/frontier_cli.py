"""``leanformer frontier``: run a sparse-attention sweep grid into a crash-safe SQLite results store.

Examples::

    leanformer frontier -c configs/frontier/smoke.yaml
    leanformer frontier --models Qwen/Qwen2.5-7B-Instruct --prefill vertical_slash,flexprefill --decode quest \\
        --sparsities 0.5,0.8,0.95 --tasks niah,qa --lengths 16384 --samples 20 --store runs/f/results.db
    torchrun --nproc-per-node 8 -m leanformer.cli frontier -c configs/frontier/qwen.yaml   # ranks shard the grid

Flags override the YAML file; ``--set task_params.niah.n_queries=2`` reaches nested keys. Re-running the same
command skips finished samples, so an interrupted sweep is resumed by running it again.
"""

from __future__ import annotations

import argparse

LIST_FLAGS = {"models": str, "tasks": str, "lengths": int, "prefill": str, "decode": str, "methods": str,
              "sparsities": float}
SCALAR_FLAGS = {"samples": int, "seed": int, "batch_size": int, "max_new_tokens": int, "store": str, "device": str,
                "device_map": str, "dtype": str, "tokenizer": str, "chat_template": str, "answer_prefix": str}


def add_parser(subparsers, name: str) -> argparse.ArgumentParser:
    p = subparsers.add_parser(name, help="run a sparse-attention sweep grid into a SQLite results store",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-c", "--config", help="YAML file with the grid (keys as the long flags, with underscores)")
    for flag in LIST_FLAGS:
        p.add_argument(f"--{flag.replace('_', '-')}", dest=flag, metavar="A,B,...", help="comma-separated list")
    for flag in SCALAR_FLAGS:
        p.add_argument(f"--{flag.replace('_', '-')}", dest=flag)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. method_params.quest.page_size=16 (repeatable)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--dry-run", action="store_true", help="validate and print the grid size, run nothing")
    p.add_argument("--rank", type=int, default=None, help="this process's shard (default: $RANK or 0)")
    p.add_argument("--world-size", type=int, default=None, help="number of shards (default: $WORLD_SIZE or 1)")
    p.add_argument("--workers", type=int, default=1,
                   help="local processes sharing the grid, one shard each (CPU: small models decode faster as "
                        "several one-thread processes than as one many-thread process); not with --rank/torchrun")
    return p


def _convert(flag: str, text: str, tp):
    from leanformer.errors import UserError

    try:
        return tp(text)
    except ValueError:
        raise UserError(f"--{flag.replace('_', '-')}: {text!r} is not a valid {tp.__name__}") from None


def raw_config(args: argparse.Namespace) -> dict:
    """YAML file + flags + ``--set`` overrides, as plain data."""
    from leanformer.config import apply_overrides, load_yaml

    raw = load_yaml(args.config) if args.config else {}
    for flag, tp in LIST_FLAGS.items():
        value = getattr(args, flag, None)
        if value is not None:
            raw[flag] = [_convert(flag, v.strip(), tp) for v in value.split(",") if v.strip()]
    for flag, tp in SCALAR_FLAGS.items():
        value = getattr(args, flag, None)
        if value is not None:
            raw[flag] = _convert(flag, value, tp)
    if args.no_progress:
        raw["progress"] = False
    return apply_overrides(raw, args.overrides)


def run(args: argparse.Namespace) -> int:
    from leanformer.errors import UserError
    from leanformer.eval import harness

    c = harness.load_config(raw_config(args))
    env_rank, env_world = harness.rank_and_world()
    rank = env_rank if args.rank is None else args.rank
    world = env_world if args.world_size is None else args.world_size
    if world < 1:
        raise UserError(f"--world-size {world} must be >= 1")
    if args.dry_run:
        cells = harness.shard(harness.validate(c), rank, world)
        print(f"grid ok: {len(cells)} cells x {c.samples} samples for rank {rank}/{world}; store {c.store}")
        return 0
    if args.workers != 1:
        if world != 1:
            raise UserError(f"--workers {args.workers} shards the grid itself: not with world size {world} "
                            "(--world-size / torchrun)")
        stats, who = harness.run_sweep_processes(c, args.workers), f"{args.workers} processes"
    else:
        stats, who = harness.run_sweep(c, rank, world), f"rank {rank}/{world}"
    print(f"{who}: {stats['cells']} cells, {stats['done_before']} samples already done, "
          f"{stats['added']} added; store {c.store}")
    if rank == 0:
        print(harness.summarize(c))
    return 0
